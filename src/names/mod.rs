//! The name-table stream: served by the pilot, followed by the agent.

pub mod table;
