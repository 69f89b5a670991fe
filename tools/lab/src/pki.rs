//! The mesh's certificates, as the director's CredHub generates them from the manifests'
//! `variables:` (manifests/bosh-istio.yml and runtime-config.yml): one CA (`/boshy_istio_ca`),
//! a server certificate for bosh-pilot whose SAN is the fixed name clients verify, a
//! client certificate for the addon's agent and Envoy, and the workload CA, an intermediate
//! under the mesh CA with which bosh-pilot signs the VMs' workload certificates. The lab generates them once at
//! `lab up` into `<lab>/mesh-tls/` (keys mode 0600) and hands them to the jobs as properties
//! at render time only, like the director's client secret.
//!
//! ECDSA P-256 keys (rcgen's ring backend generates no RSA; CredHub's are RSA 2048, which
//! the same code loads).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};

use super::Layout;

/// The name in bosh-pilot's certificate that every client verifies: the bosh-pilot job's
/// `tls_server_name` default, and the common name the manifests generate the certificate for.
pub const PILOT_SERVER_NAME: &str = "bosh-pilot.boshy-istio";

/// The mesh CA's key file (`mesh-ca.key`); its certificate is `ca.pem`.
const MESH_CA: &str = "mesh-ca";
/// The file name of the workload CA.
const WORKLOAD_CA: &str = "workload-ca";
/// The name Envoy's metrics listener is verified by: the addon certificate's DNS SAN.
pub const ADDON_SERVER_NAME: &str = "addon.boshy-istio";
/// The certificate the lab gives Prometheus to scrape with: a client certificate of the mesh
/// CA, as an operator would issue one for prometheus-boshrelease.
const SCRAPER: &str = "prometheus";
/// The file name of the workload CA that replaces it in a rotation.
const NEXT_WORKLOAD_CA: &str = "workload-ca-next";

/// The steps of a workload CA rotation (docs/security.md, "Certificate authority").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RotationStep {
    Begin,
    Switch,
    Finish,
}

impl RotationStep {
    fn as_str(self) -> &'static str {
        match self {
            RotationStep::Begin => "begin",
            RotationStep::Switch => "switch",
            RotationStep::Finish => "finish",
        }
    }

    fn parse(text: &str) -> Result<RotationStep> {
        [
            RotationStep::Begin,
            RotationStep::Switch,
            RotationStep::Finish,
        ]
        .into_iter()
        .find(|step| step.as_str() == text)
        .with_context(|| format!("`{text}` is not a step of the workload CA's rotation"))
    }
}

/// A CA that signs leaf certificates.
pub struct Ca {
    key: KeyPair,
    cert: Certificate,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(common_name: &str) -> Result<Ca> {
        let key = KeyPair::generate().context("generating a CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .with_context(|| format!("self-signing the CA {common_name}"))?;
        Ok(Ca { key, cert })
    }

    /// An intermediate CA under this one (CredHub's `is_ca: true` with `ca:` another CA).
    pub fn intermediate(&self, common_name: &str) -> Result<Ca> {
        let key = KeyPair::generate().context("generating an intermediate CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("signing the intermediate CA {common_name}"))?;
        Ok(Ca { key, cert })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's own key: the `private_key` of a CA certificate variable, as CredHub gives it.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A server certificate for the DNS name `name` (common name and SAN).
    pub fn server(&self, name: &str) -> Result<Issued> {
        self.issue(
            name,
            vec![name.to_string()],
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A client certificate (no SAN: the pilot checks only that the mesh CA signed it).
    pub fn client(&self, common_name: &str) -> Result<Issued> {
        self.issue(
            common_name,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    /// The addon's certificate, as manifests/runtime-config.yml declares
    /// `/boshy_istio_addon_tls`: a client certificate to the pilots, and the server
    /// certificate of Envoy's metrics listener, named [`ADDON_SERVER_NAME`].
    pub fn addon(&self) -> Result<Issued> {
        self.issue(
            "boshy-istio addon",
            vec![ADDON_SERVER_NAME.to_string()],
            vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
        )
    }

    fn issue(
        &self,
        common_name: &str,
        dns_names: Vec<String>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<Issued> {
        let key = KeyPair::generate().context("generating a certificate key")?;
        let mut params = CertificateParams::new(dns_names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("signing the certificate {common_name}"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The lab's mesh certificate files.
pub struct MeshFiles {
    dir: PathBuf,
}

impl MeshFiles {
    pub fn of(layout: &Layout) -> MeshFiles {
        MeshFiles {
            dir: layout.dir.join("mesh-tls"),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The client certificate and key the addon's agents and Envoys present, which the
    /// lab's own tooling presents to the pilot's API too (docs/api.md).
    pub fn client_cert(&self) -> PathBuf {
        self.cert("client")
    }
    pub fn client_key(&self) -> PathBuf {
        self.key("client")
    }
    /// Prometheus's client certificate and key.
    pub fn scraper_cert(&self) -> PathBuf {
        self.cert(SCRAPER)
    }
    pub fn scraper_key(&self) -> PathBuf {
        self.key(SCRAPER)
    }
    fn cert(&self, who: &str) -> PathBuf {
        self.dir.join(format!("{who}.pem"))
    }
    fn key(&self, who: &str) -> PathBuf {
        self.dir.join(format!("{who}.key"))
    }

    /// Generates the CA, the pilot's and the clients' certificates and the workload CA unless
    /// they exist.
    pub fn ensure(&self) -> Result<()> {
        let all = [
            self.ca(),
            self.key(MESH_CA),
            self.cert("pilot"),
            self.key("pilot"),
            self.cert("client"),
            self.key("client"),
            self.cert(SCRAPER),
            self.key(SCRAPER),
            self.cert(WORKLOAD_CA),
            self.key(WORKLOAD_CA),
        ];
        if all.iter().all(|path| path.exists()) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let ca = Ca::new("boshy-istio lab CA")?;
        for (who, issued) in [
            ("pilot", ca.server(PILOT_SERVER_NAME)?),
            ("client", ca.addon()?),
            (SCRAPER, ca.client("prometheus")?),
        ] {
            super::write_private(&self.key(who), &issued.key_pem)?;
            write_public(&self.cert(who), &issued.cert_pem)?;
        }
        // Kept, as CredHub keeps a CA variable's key: the pilots sign joining VMs' mesh
        // certificates with it (`workloads.mesh_ca`, docs/workloads.md).
        super::write_private(&self.key(MESH_CA), &ca.key_pem())?;
        let workload = ca.intermediate("boshy-istio lab workload CA")?;
        super::write_private(&self.key(WORKLOAD_CA), &workload.key_pem())?;
        write_public(&self.cert(WORKLOAD_CA), &workload.cert_pem())?;
        // The CA last: its presence means the set is complete.
        write_public(&self.ca(), &ca.cert_pem())
    }

    /// The pilot's `identity.ca` property: the workload CA as a BOSH certificate variable
    /// interpolates it (its `ca` is the mesh CA that signed it), or, during a rotation
    /// ([`Self::rotate_workload_ca`]), as the CredHub procedure of docs/security.md has it at
    /// that step.
    pub fn workload_ca_property(&self) -> Result<Value> {
        let step = match std::fs::read_to_string(self.rotation_step_path()) {
            Ok(step) => RotationStep::parse(step.trim())?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return self.property(WORKLOAD_CA)
            }
            Err(err) => return Err(err).context("reading the lab's CA rotation step"),
        };
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let (mesh_ca, next) = (read(&self.ca())?, read(&self.cert(NEXT_WORKLOAD_CA))?);
        let both = format!("{}\n{}", mesh_ca.trim_end(), next.trim_end());
        let (who, ca) = match step {
            // The new CA is trusted everywhere; the old one still signs.
            RotationStep::Begin => (WORKLOAD_CA, both),
            // The new CA signs; the old one is still trusted.
            RotationStep::Switch => (NEXT_WORKLOAD_CA, both),
            // The old CA is gone.
            RotationStep::Finish => (NEXT_WORKLOAD_CA, next),
        };
        Ok(json!({
            "ca": ca,
            "certificate": read(&self.cert(who))?,
            "private_key": read(&self.key(who))?,
        }))
    }

    /// Moves the workload CA's rotation to `step`: `begin` makes the new CA (a root of its
    /// own) and adds it to what every VM trusts, `switch` signs with it, `finish` stops
    /// trusting the old one. The pilots read it when they are next updated.
    pub fn rotate_workload_ca(&self, step: RotationStep) -> Result<()> {
        if step == RotationStep::Begin {
            let next = Ca::new("boshy-istio lab workload CA (rotated)")?;
            super::write_private(&self.key(NEXT_WORKLOAD_CA), &next.key_pem())?;
            write_public(&self.cert(NEXT_WORKLOAD_CA), &next.cert_pem())?;
        } else if !self.cert(NEXT_WORKLOAD_CA).exists() {
            anyhow::bail!("the workload CA's rotation has not begun (`lab ca rotate begin`)");
        }
        write_public(&self.rotation_step_path(), step.as_str())
    }

    fn rotation_step_path(&self) -> PathBuf {
        self.dir.join("workload-ca-rotation")
    }

    /// The pilot's `workloads.mesh_ca` property: the mesh CA itself, as `((/boshy_istio_ca))`
    /// interpolates a CA variable (`certificate`, `private_key`).
    pub fn mesh_ca_property(&self) -> Result<Value> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(json!({
            "certificate": read(&self.ca())?,
            "private_key": read(&self.key(MESH_CA))?,
        }))
    }

    /// A job's `tls` property as a BOSH certificate variable interpolates it: `ca`,
    /// `certificate`, `private_key`. `who` is `pilot` or `client`.
    pub fn property(&self, who: &str) -> Result<Value> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(json!({
            "ca": read(&self.ca())?,
            "certificate": read(&self.cert(who))?,
            "private_key": read(&self.key(who))?,
        }))
    }
}

fn write_public(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_lab_generates_the_set_once_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let files = MeshFiles {
            dir: dir.path().join("mesh-tls"),
        };
        files.ensure().unwrap();
        for who in ["pilot", "client"] {
            let mode = std::fs::metadata(files.key(who))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{who}.key");
        }
        let before = files.property("pilot").unwrap();
        files.ensure().unwrap();
        assert_eq!(files.property("pilot").unwrap(), before, "not regenerated");
        assert!(before["certificate"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(
            before["private_key"],
            files.property("client").unwrap()["private_key"]
        );
        // The workload CA is a CA under the mesh CA.
        let workload = files.workload_ca_property().unwrap();
        assert_eq!(workload["ca"], before["ca"]);
        assert_ne!(workload["certificate"], workload["ca"]);
        assert_ne!(workload["private_key"], before["private_key"]);

        // A rotation: the new CA trusted, then signing, then alone.
        assert!(
            files.rotate_workload_ca(RotationStep::Switch).is_err(),
            "not begun"
        );
        files.rotate_workload_ca(RotationStep::Begin).unwrap();
        let begun = files.workload_ca_property().unwrap();
        assert_eq!(
            begun["certificate"], workload["certificate"],
            "the old CA signs"
        );
        let mesh_ca = before["ca"].as_str().unwrap().trim_end().to_string();
        let trusted = begun["ca"].as_str().unwrap();
        assert!(trusted.starts_with(&mesh_ca) && trusted.len() > mesh_ca.len() + 100);
        files.rotate_workload_ca(RotationStep::Switch).unwrap();
        let switched = files.workload_ca_property().unwrap();
        assert_ne!(
            switched["certificate"], workload["certificate"],
            "the new CA signs"
        );
        assert_eq!(switched["ca"], begun["ca"], "both still trusted");
        files.rotate_workload_ca(RotationStep::Finish).unwrap();
        let finished = files.workload_ca_property().unwrap();
        assert_eq!(finished["ca"], finished["certificate"], "the new CA alone");
    }
}
