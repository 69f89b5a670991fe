//! `lab rules apply|list|delete`: what `bosh update-config`, `bosh configs` and
//! `bosh delete-config` do with `--type boshy-istio`, played against the lab's director
//! simulator through the director API itself (HTTPS, a UAA token for the lab's client, the
//! director's CA), so that the pilots learn of a change exactly as they would from a real
//! director: from its event (docs/director-api.md §5, §6).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use boshy::config::{DirectorConfig, Secret};
use boshy::director::{DirectorClient, RULES_CONFIG_TYPE};
use reqwest::Method;
use serde::Deserialize as _;
use serde_json::{json, Value};

use super::{Layout, DIRECTOR_CLIENT};

/// The config content `bosh update-config` sends for a file: its first YAML document, parsed
/// and serialized again (comments go, anchors are expanded), and a warning when the file holds
/// more than one document, which bosh-cli drops without a word. bosh-cli also sorts the keys;
/// they keep their order here, which changes nothing the director or the pilot sees in them.
pub fn config_content(text: &str) -> Result<(String, Option<String>)> {
    let mut documents = serde_yaml::Deserializer::from_str(text);
    let first = documents
        .next()
        .ok_or_else(|| anyhow!("it holds no YAML document"))?;
    let value = serde_yaml::Value::deserialize(first).context("it is not valid YAML")?;
    let warning = documents.next().is_some().then(|| {
        "it holds more than one YAML document: like `bosh update-config`, only the first is \
         applied"
            .to_string()
    });
    Ok((serde_yaml::to_string(&value)?, warning))
}

/// The config name `apply` uses without `--name`: the file's name without its extension.
pub fn default_name(file: &Path) -> Result<String> {
    file.file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|stem| !stem.is_empty())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{}: no name to give the config: use --name", file.display()))
}

/// `GET /configs` and `DELETE /configs` with their query, encoded as a URL query.
fn configs_path(query: &[(&str, &str)]) -> String {
    let url = reqwest::Url::parse_with_params("https://director.invalid/configs", query)
        .expect("a valid base URL");
    format!("{}?{}", url.path(), url.query().unwrap_or_default())
}

/// The lab's `bosh` CLI: the pilot's director client, logged in as the lab's client.
pub struct RulesCli {
    client: DirectorClient,
}

impl RulesCli {
    /// Logged in to the lab's director with the lab's client secret and trusting its CA, the
    /// files the simulator wrote under the lab's directory.
    pub fn of_lab(layout: &Layout) -> Result<RulesCli> {
        let secret_path = layout.client_secret_path();
        let secret = std::fs::read_to_string(&secret_path)
            .with_context(|| format!("cannot read {}", secret_path.display()))?;
        let cfg: DirectorConfig = serde_json::from_value(json!({
            "url": format!("https://{}:25555", layout.director_ip()),
            "client": DIRECTOR_CLIENT,
            "ca_cert_path": layout.director_ca_path(),
        }))?;
        RulesCli::new(&cfg, Secret::new(secret.trim()))
    }

    pub fn new(cfg: &DirectorConfig, secret: Secret) -> Result<RulesCli> {
        Ok(RulesCli {
            client: DirectorClient::new(cfg, secret)?,
        })
    }

    /// `bosh update-config --type boshy-istio --name <name> <file>`, with the id read first as
    /// `expected_latest_id`, as bosh-cli sends the id its diff returned.
    pub async fn apply(&self, file: &Path, name: Option<String>) -> Result<()> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let (content, warning) =
            config_content(&text).with_context(|| format!("{}", file.display()))?;
        if let Some(warning) = warning {
            eprintln!("warning: {}: {warning}", file.display());
        }
        let name = name.map_or_else(|| default_name(file), Ok)?;
        let current = self
            .client
            .latest_configs(RULES_CONFIG_TYPE, Some(&name))
            .await?
            .into_iter()
            .next();
        let current_id = current.as_ref().map_or("0", |c| c.id.as_str());
        let body = json!({
            "type": RULES_CONFIG_TYPE,
            "name": name,
            "content": content,
            "expected_latest_id": current_id,
        });
        let response = self
            .client
            .send(Method::POST, "/configs", Some(&body))
            .await?;
        let answer: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        match response.status.as_u16() {
            201 if answer["id"] == current_id => {
                println!("rule config {name}: unchanged (id {current_id})");
            }
            201 => println!(
                "rule config {name}: id {} (the pilots read it at their next poll)",
                answer["id"].as_str().unwrap_or("?")
            ),
            412 => bail!("rule config {name} changed while it was applied: apply it again"),
            status => bail!(
                "the director refused rule config {name}: {status}: {}",
                answer["description"].as_str().unwrap_or("(no description)")
            ),
        }
        Ok(())
    }

    /// `bosh configs --type boshy-istio`: the latest config of every name.
    pub async fn list(&self) -> Result<()> {
        let configs = self.client.latest_configs(RULES_CONFIG_TYPE, None).await?;
        if configs.is_empty() {
            println!("no rule configs (type {RULES_CONFIG_TYPE})");
            return Ok(());
        }
        println!("{:<24} {:<8} {:<26} bytes", "name", "id", "created at");
        for config in configs {
            println!(
                "{:<24} {:<8} {:<26} {}",
                config.name,
                config.id,
                config.created_at.as_deref().unwrap_or("-"),
                config.content.len()
            );
        }
        Ok(())
    }

    /// `bosh delete-config --type boshy-istio --name <name>`: every version of that name.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = configs_path(&[("type", RULES_CONFIG_TYPE), ("name", name)]);
        let response = self.client.send(Method::DELETE, &path, None).await?;
        match response.status.as_u16() {
            204 => println!(
                "rule config {name}: deleted. The director writes no event for a delete: the \
                 pilots drop it at their next full resync (director.full_resync_seconds, 300 \
                 by default)"
            ),
            404 => bail!("no rule config {name}"),
            status => bail!(
                "the director refused to delete rule config {name}: {status}: {}",
                String::from_utf8_lossy(&response.body).trim()
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_document_is_applied_and_a_second_is_warned_about() {
        let (content, warning) = config_content("# reviews\nkind: VirtualService\n").unwrap();
        assert_eq!(content, "kind: VirtualService\n");
        assert_eq!(warning, None);
        let (content, warning) =
            config_content("---\nkind: VirtualService\n---\nkind: DestinationRule\n").unwrap();
        assert_eq!(content, "kind: VirtualService\n");
        assert!(warning.unwrap().contains("only the first"));
    }

    #[test]
    fn anchors_are_expanded_and_bad_yaml_is_an_error() {
        let (content, _) = config_content("a: &x {b: 1}\nc: *x\n").unwrap();
        assert_eq!(content, "a:\n  b: 1\nc:\n  b: 1\n");
        assert!(config_content("a: [1\n").is_err());
        // As bosh-cli sends it; the director refuses it (not a hash).
        assert_eq!(config_content("").unwrap().0, "null\n");
    }

    #[test]
    fn the_default_name_is_the_file_name_without_extension() {
        assert_eq!(
            default_name(Path::new("/tmp/reviews-rules.yml")).unwrap(),
            "reviews-rules"
        );
        assert!(default_name(Path::new("/")).is_err());
    }

    /// Against the in-process director simulator, through its real API.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn apply_list_and_delete_do_what_bosh_cli_does() {
        const SECRET: &str = "lab-rules-test-secret";
        let sim = boshy_director_sim::start(boshy_director_sim::SimOptions::new(SECRET))
            .await
            .unwrap();
        let cfg: DirectorConfig = serde_json::from_value(json!({
            "url": sim.director_url(),
            "client": DIRECTOR_CLIENT,
            "ca_cert": sim.ca_pem(),
        }))
        .unwrap();
        let cli = RulesCli::new(&cfg, Secret::new(SECRET)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let latest = || async {
            let configs = cli.client.latest_configs(RULES_CONFIG_TYPE, None).await;
            configs
                .unwrap()
                .into_iter()
                .map(|c| (c.name, c.id, c.content))
                .collect::<Vec<_>>()
        };
        let reviews = file(
            "reviews-rules.yml",
            "# the reviews route\nkind: VirtualService\n---\nkind: Ignored\n",
        );
        cli.apply(&reviews, None).await.unwrap();
        cli.apply(&reviews, None).await.unwrap();
        let ratings = file("r.yml", "kind: DestinationRule\n");
        cli.apply(&ratings, Some("ratings".into())).await.unwrap();
        let (one, two) = ("kind: VirtualService\n", "kind: DestinationRule\n");
        let expected = |id_ratings: &str, id_reviews: &str| {
            vec![
                (
                    "ratings".to_string(),
                    id_ratings.to_string(),
                    two.to_string(),
                ),
                (
                    "reviews-rules".to_string(),
                    id_reviews.to_string(),
                    one.to_string(),
                ),
            ]
        };
        assert_eq!(
            latest().await,
            expected("2", "1"),
            "the same file twice is one version"
        );
        let not_a_hash = file("list.yml", "- kind: VirtualService\n");
        let refused = cli.apply(&not_a_hash, Some("ratings".into())).await;
        assert!(
            format!("{:#}", refused.unwrap_err()).contains("YAML hash expected"),
            "the director's refusal is reported"
        );
        cli.list().await.unwrap();
        cli.delete("reviews-rules").await.unwrap();
        let again = cli.delete("reviews-rules").await.unwrap_err();
        assert!(
            again.to_string().contains("no rule config reviews-rules"),
            "{again}"
        );
        assert_eq!(latest().await, expected("2", "1")[..1]);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            configs_path(&[("type", "boshy-istio"), ("name", "a b&c")]),
            "/configs?type=boshy-istio&name=a+b%26c"
        );
    }
}
