//! `boshy leave`: tells a pilot the VM leaves (its registration goes at once), then undoes
//! everything the join state lists. A pilot that cannot be told is no reason to keep the VM
//! in the mesh: the local cleanup goes on, and the registration expires on its own.

use anyhow::{bail, Context, Result};

use super::layout::Layout;
use super::state::{self, JoinState};
use super::wire;
use super::{LeaveArgs, RealHost};
use crate::mesh_cli::PilotConnection;

/// `boshy leave`.
pub(crate) async fn leave(args: LeaveArgs) -> Result<()> {
    let layout = Layout::new(&args.root);
    super::install::check_root(&args.root, args.service_manager)?;
    let Some(state) = JoinState::load(&layout.state())? else {
        bail!(
            "this VM has not joined the mesh (no {}): nothing to leave, nothing changed",
            layout.state().display()
        );
    };
    match tell_pilots(&layout, &state).await {
        Ok(pilot) => println!(
            "left: {} deregistered {}",
            pilot, state.registration.instance
        ),
        Err(err) => eprintln!(
            "warning: {err:#}; the registration of {} stays until it misses heartbeats for the \
             pilot's grace period (workloads.deregister_after_seconds, 600 s by default), and \
             it is out of every Envoy once its heartbeats stop for the TTL",
            state.registration.instance
        ),
    }
    // The units are stopped the way they were started, whatever this command was told.
    let host = RealHost {
        manager: state.service_manager,
    };
    let (warnings, errors) = state::undo_all(&state.changes, &host, &[layout.state()]);
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    if !errors.is_empty() {
        // Keep the state: `boshy leave` again finishes the job (every undo is idempotent).
        state
            .save(&layout.state())
            .context("keeping the join state after a failed leave")?;
        let list: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
        bail!(
            "boshy leave could not undo everything ({}); run it again once fixed",
            list.join("; ")
        );
    }
    println!("removed everything `boshy join` installed; the resolver is as it was");
    Ok(())
}

/// POSTs the leave, with the VM's certificate, to each pilot in turn until one answers; the
/// pilot that deregistered the VM. A pilot that answers with an error (the registration is
/// already gone) counts as told.
pub(crate) async fn tell_pilots(layout: &Layout, state: &JoinState) -> Result<String> {
    let mut unanswered = Vec::new();
    for pilot in &state.pilots {
        let client = PilotConnection::new(
            pilot,
            layout.ca(),
            &state.server_name,
            Some((layout.certificate(), layout.key())),
            "",
        )
        .client()?;
        match client
            .post_json(wire::LEAVE_PATH, &serde_json::json!({}))
            .await
        {
            Err(err) => unanswered.push(format!("{err:#}")),
            Ok((url, response)) => {
                let status = response.status();
                if status.is_success() {
                    return Ok(pilot.clone());
                }
                let body = response.text().await.unwrap_or_default();
                eprintln!("warning: POST {url}: {status}: {}", wire::reason(&body));
                return Ok(pilot.clone());
            }
        }
    }
    bail!("no pilot answered the leave: {}", unanswered.join("; "))
}
