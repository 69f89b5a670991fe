//! The lab's handle on the director simulator's control API (`/_sim/...`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

/// One instance row as the simulator's `GET /_sim/state` shows it (docs/director-api.md §3.3).
#[derive(Debug, Clone, Deserialize)]
pub struct SimInstance {
    pub id: String,
    pub job_name: String,
    pub index: Option<u32>,
    pub az: Option<String>,
    #[serde(default)]
    pub ips: Vec<String>,
    pub job_state: Option<String>,
    pub vm_cid: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimDeployment {
    pub name: String,
    pub manifest: Option<String>,
    #[serde(default)]
    pub instances: Vec<SimInstance>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimState {
    pub deployments: Vec<SimDeployment>,
}

pub struct SimControl {
    base: String,
    http: reqwest::Client,
}

impl SimControl {
    pub fn new(base: String) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(SimControl { base, http })
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("director simulator ({}): {what}", self.base))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("director simulator: {what}: {status}: {}", text.trim());
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn state(&self) -> Result<SimState> {
        let value = self
            .send(
                self.http.get(format!("{}/_sim/state", self.base)),
                "read state",
            )
            .await?;
        serde_json::from_value(value).context("director simulator: decode /_sim/state")
    }

    pub async fn is_up(&self) -> bool {
        self.state().await.is_ok()
    }

    pub async fn add_instance(
        &self,
        deployment: &str,
        instance_group: &str,
        az: Option<&str>,
    ) -> Result<Value> {
        let url = format!("{}/_sim/deployments/{deployment}/instances", self.base);
        let body = json!({ "instance_group": instance_group, "az": az });
        self.send(self.http.post(url).json(&body), "add instance")
            .await
    }

    pub async fn remove_instance(&self, deployment: &str, id: &str) -> Result<()> {
        let url = format!("{}/_sim/deployments/{deployment}/instances/{id}", self.base);
        self.send(self.http.delete(url), "remove instance").await?;
        Ok(())
    }

    pub async fn set_job_state(&self, deployment: &str, id: &str, job_state: &str) -> Result<()> {
        let url = format!("{}/_sim/deployments/{deployment}/instances/{id}", self.base);
        let body = json!({ "job_state": job_state });
        self.send(self.http.put(url).json(&body), "set job_state")
            .await?;
        Ok(())
    }

    pub async fn set_fault(&self, mode: &str, path_prefix: Option<&str>) -> Result<()> {
        let body = json!({ "mode": mode, "path_prefix": path_prefix });
        let url = format!("{}/_sim/fault", self.base);
        self.send(self.http.put(url).json(&body), "set fault")
            .await?;
        Ok(())
    }

    pub async fn expire_tokens(&self) -> Result<()> {
        let url = format!("{}/_sim/tokens/expire", self.base);
        self.send(self.http.post(url), "expire tokens").await?;
        Ok(())
    }

    /// A token from the simulator's UAA with `scopes`, as `bosh login` would get an
    /// operator's.
    pub async fn issue_token(&self, scopes: &[&str], ttl_seconds: i64) -> Result<String> {
        let url = format!("{}/_sim/tokens/issue", self.base);
        let body = json!({ "scopes": scopes, "ttl_seconds": ttl_seconds });
        let answer = self
            .send(self.http.post(url).json(&body), "issue a token")
            .await?;
        answer["access_token"]
            .as_str()
            .map(str::to_string)
            .context("director simulator: no access_token in the answer")
    }

    pub async fn put_manifest(&self, deployment: &str, manifest: String) -> Result<()> {
        let url = format!("{}/_sim/deployments/{deployment}/manifest", self.base);
        self.send(self.http.put(url).body(manifest), "replace manifest")
            .await?;
        Ok(())
    }

    pub async fn requests(&self) -> Result<Value> {
        self.send(
            self.http.get(format!("{}/_sim/requests", self.base)),
            "read request counters",
        )
        .await
    }
}
