//! Director tasks: ids, the queued → processing → done timeline, and their output
//! (docs/director-api.md §4).

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::clock::unix_seconds;

/// The director keeps this many tasks per type (`max_tasks`).
const MAX_TASKS_PER_KIND: usize = 2000;

/// Task types `GET /tasks` shows at the default `verbose=1` ("interesting" ones).
const VERBOSE_ONE_KINDS: [&str; 3] = ["update_deployment", "delete_deployment", "update_config"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Queued,
    Processing,
    Done,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Processing => "processing",
            TaskState::Done => "done",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: u64,
    pub kind: &'static str,
    pub description: String,
    pub deployment: Option<String>,
    pub user: String,
    pub context_id: String,
    /// When a worker takes the task (`processing`); `queued` before.
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
    /// Result lines, already in the order the worker threads happened to write them.
    pub result_lines: Vec<String>,
}

impl Task {
    pub fn state_at(&self, now: SystemTime) -> TaskState {
        if now >= self.finished_at {
            TaskState::Done
        } else if now >= self.started_at {
            TaskState::Processing
        } else {
            TaskState::Queued
        }
    }

    /// The `GET /tasks/:id` shape: `timestamp` is the finish time and null until then.
    pub fn to_json(&self, now: SystemTime) -> Value {
        let state = self.state_at(now);
        json!({
            "id": self.id,
            "state": state.as_str(),
            "description": self.description,
            "timestamp": (state == TaskState::Done).then(|| unix_seconds(self.finished_at)),
            "started_at": (state != TaskState::Queued).then(|| unix_seconds(self.started_at)),
            "result": "",
            "user": self.user,
            "deployment": self.deployment,
            "context_id": self.context_id,
        })
    }

    /// `type=result`: empty while queued, the first half of the lines while processing (the
    /// workers are writing), all of them when done. Every line ends in `\n`.
    pub fn result_output(&self, now: SystemTime) -> String {
        let written = match self.state_at(now) {
            TaskState::Queued => 0,
            TaskState::Processing => self.result_lines.len() / 2,
            TaskState::Done => self.result_lines.len(),
        };
        self.result_lines[..written]
            .iter()
            .map(|line| format!("{line}\n"))
            .collect()
    }
}

/// `GET /tasks` filters.
#[derive(Debug, Default)]
pub struct TaskQuery {
    pub states: Option<Vec<String>>,
    pub deployment: Option<String>,
    pub context_id: Option<String>,
    pub limit: Option<i64>,
    pub verbose: Option<u8>,
}

#[derive(Debug, Default)]
pub struct TaskList {
    tasks: Vec<Task>,
    last_id: u64,
    /// With a worker limit (the director's `workers`, 3 by default), when each worker is
    /// next free; empty without one.
    workers_free_at: Vec<SystemTime>,
}

/// A task about to be recorded; the list gives it its id.
pub struct NewTask {
    pub kind: &'static str,
    pub description: String,
    pub deployment: Option<String>,
    pub user: String,
    pub context_id: String,
    /// Without a worker limit, time spent queued plus processing, half each; with one, time
    /// spent processing on a worker, after waiting queued for a free one.
    pub duration: Duration,
    pub result_lines: Vec<String>,
}

impl TaskList {
    /// A list whose tasks share `workers` workers: a task waits queued until one is free.
    pub fn with_workers(workers: usize) -> TaskList {
        TaskList {
            workers_free_at: vec![SystemTime::UNIX_EPOCH; workers],
            ..TaskList::default()
        }
    }

    /// When a task of `duration` created at `now` starts and ends; it takes a worker, if the
    /// list has a limit, for that whole time. The simulator's deploys are instantaneous
    /// (`Duration::ZERO`) and take none.
    fn schedule(&mut self, duration: Duration, now: SystemTime) -> (SystemTime, SystemTime) {
        let worker = self.workers_free_at.iter_mut().min();
        let Some(worker) = worker.filter(|_| !duration.is_zero()) else {
            return (now + duration / 2, now + duration);
        };
        let started = (*worker).max(now);
        *worker = started + duration;
        (started, *worker)
    }

    pub fn create(&mut self, new: NewTask, now: SystemTime) -> u64 {
        let (started_at, finished_at) = self.schedule(new.duration, now);
        self.last_id += 1;
        self.tasks.push(Task {
            id: self.last_id,
            kind: new.kind,
            description: new.description,
            deployment: new.deployment,
            user: new.user,
            context_id: new.context_id,
            started_at,
            finished_at,
            result_lines: new.result_lines,
        });
        let of_kind = self.tasks.iter().filter(|t| t.kind == new.kind).count();
        if of_kind > MAX_TASKS_PER_KIND {
            let oldest = self
                .tasks
                .iter()
                .position(|t| t.kind == new.kind)
                .expect("a task of this kind was just counted");
            self.tasks.remove(oldest);
        }
        self.last_id
    }

    pub fn get(&self, id: u64) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// Newest first, like the director's `order by timestamp desc`.
    pub fn query(&self, query: &TaskQuery, now: SystemTime) -> Vec<&Task> {
        let verbose = query.verbose.unwrap_or(1);
        let limit = query.limit.map(|n| n.max(1) as usize).unwrap_or(usize::MAX);
        self.tasks
            .iter()
            .rev()
            .filter(|t| verbose >= 2 || VERBOSE_ONE_KINDS.contains(&t.kind))
            .filter(|t| {
                query
                    .states
                    .as_ref()
                    .is_none_or(|states| states.iter().any(|s| s == t.state_at(now).as_str()))
            })
            .filter(|t| {
                query
                    .deployment
                    .as_ref()
                    .is_none_or(|d| t.deployment.as_ref() == Some(d))
            })
            .filter(|t| query.context_id.as_ref().is_none_or(|c| &t.context_id == c))
            .take(limit)
            .collect()
    }
}

/// How a `Range` header applies to an output of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    Whole,
    From(usize),
    Unsatisfiable,
}

/// Only `bytes=N-` is meaningful to the director (bosh-cli tails event output with it).
pub fn byte_range(header: Option<&str>, size: usize) -> ByteRange {
    let Some(start) = header
        .and_then(|h| h.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return ByteRange::Whole;
    };
    if start >= size {
        ByteRange::Unsatisfiable
    } else {
        ByteRange::From(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vms_task(list: &mut TaskList, now: SystemTime) -> u64 {
        list.create(
            NewTask {
                kind: "vms",
                description: "retrieve vm-stats".into(),
                deployment: Some("d".into()),
                user: "pilot".into(),
                context_id: String::new(),
                duration: Duration::from_secs(10),
                result_lines: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            },
            now,
        )
    }

    #[test]
    fn a_task_moves_from_queued_to_processing_to_done_and_output_grows() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut list = TaskList::default();
        let id = vms_task(&mut list, t0);
        let task = list.get(id).unwrap();
        let queued = task.to_json(t0);
        assert_eq!(queued["state"], "queued");
        assert!(queued["timestamp"].is_null() && queued["started_at"].is_null());
        assert_eq!(task.result_output(t0), "");

        let mid = t0 + Duration::from_secs(6);
        let processing = task.to_json(mid);
        assert_eq!(processing["state"], "processing");
        assert_eq!(processing["started_at"], 1005);
        assert!(processing["timestamp"].is_null());
        assert_eq!(task.result_output(mid), "a\nb\n");

        let end = t0 + Duration::from_secs(10);
        let done = task.to_json(end);
        assert_eq!(done["state"], "done");
        assert_eq!(done["timestamp"], 1010);
        assert_eq!(done["id"], json!(id));
        assert_eq!(task.result_output(end), "a\nb\nc\nd\n");
    }

    #[test]
    fn with_a_worker_limit_a_task_waits_queued_for_a_free_worker() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut list = TaskList::with_workers(2);
        let ids: Vec<u64> = (0..3).map(|_| vms_task(&mut list, t0)).collect();
        let state = |id: u64, at: u64| {
            let task = list.get(id).unwrap();
            task.state_at(t0 + Duration::from_secs(at)).as_str()
        };
        // Two workers take the first two at once, for the whole 10 s.
        assert_eq!(
            (state(ids[0], 0), state(ids[1], 0)),
            ("processing", "processing")
        );
        assert_eq!(state(ids[2], 9), "queued");
        assert_eq!(state(ids[2], 10), "processing");
        assert_eq!(state(ids[2], 20), "done");
        assert_eq!(state(ids[0], 10), "done");
    }

    #[test]
    fn vms_tasks_only_show_with_verbose_two_and_filters_apply() {
        let now = SystemTime::UNIX_EPOCH;
        let mut list = TaskList::default();
        vms_task(&mut list, now);
        let deploy = list.create(
            NewTask {
                kind: "update_deployment",
                description: "create deployment".into(),
                deployment: Some("e".into()),
                user: "admin".into(),
                context_id: "ctx".into(),
                duration: Duration::ZERO,
                result_lines: Vec::new(),
            },
            now,
        );
        let ids = |q: TaskQuery| -> Vec<u64> { list.query(&q, now).iter().map(|t| t.id).collect() };
        assert_eq!(ids(TaskQuery::default()), [deploy]);
        assert_eq!(
            ids(TaskQuery {
                verbose: Some(2),
                ..Default::default()
            }),
            [2, 1]
        );
        assert_eq!(
            ids(TaskQuery {
                verbose: Some(2),
                limit: Some(0),
                ..Default::default()
            }),
            [2]
        );
        let queued = TaskQuery {
            verbose: Some(2),
            states: Some(vec!["queued".into(), "processing".into()]),
            ..Default::default()
        };
        assert_eq!(ids(queued), [1]);
        let by_deployment = TaskQuery {
            verbose: Some(2),
            deployment: Some("d".into()),
            ..Default::default()
        };
        assert_eq!(ids(by_deployment), [1]);
        assert_eq!(
            ids(TaskQuery {
                context_id: Some("ctx".into()),
                ..Default::default()
            }),
            [deploy]
        );
    }

    #[test]
    fn byte_ranges_follow_the_director() {
        assert_eq!(byte_range(None, 10), ByteRange::Whole);
        assert_eq!(byte_range(Some("bytes=4-"), 10), ByteRange::From(4));
        assert_eq!(byte_range(Some("bytes=10-"), 10), ByteRange::Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=0-"), 0), ByteRange::Unsatisfiable);
    }
}
