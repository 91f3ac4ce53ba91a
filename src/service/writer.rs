//! Group commit for new messages. Concurrent `/messages/send` and `POST /messages` requests
//! hand their validated, authorized rows to one task, which writes everything waiting in
//! one transaction and then sends each request's frames in commit order. Each request still
//! gets all-or-nothing semantics (see `Services::write_jobs`). On SQLite, where writers are
//! serialized anyway, this turns N small transactions into one.
use tokio::sync::{mpsc, oneshot};

use super::Services;
use super::model::Message;
use crate::error::{AppError, AppResult};
use crate::store::entities::messages;

/// The conversations of a batch, by id.
pub type ConvMap = std::collections::HashMap<String, super::ConvAccess>;

/// Most rows written in one shared transaction.
const MAX_BATCH_ROWS: usize = 256;

pub(super) struct Job {
    pub rows: Vec<(messages::Model, bool)>,
    pub convs: ConvMap,
    pub reply: oneshot::Sender<AppResult<Vec<Message>>>,
}

#[derive(Clone)]
pub(super) struct Writer {
    tx: mpsc::UnboundedSender<Job>,
}

impl Writer {
    pub fn spawn(services: Services) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut rows = first.rows.len();
                let mut jobs = vec![first];
                while rows < MAX_BATCH_ROWS {
                    match rx.try_recv() {
                        Ok(job) => {
                            rows += job.rows.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                services.write_jobs(jobs).await;
            }
        });
        Self { tx }
    }

    pub async fn submit(
        &self,
        rows: Vec<(messages::Model, bool)>,
        convs: ConvMap,
    ) -> AppResult<Vec<Message>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { rows, convs, reply })
            .map_err(|_| AppError::Internal("message writer stopped".into()))?;
        answer
            .await
            .map_err(|_| AppError::Internal("message writer dropped a job".into()))?
    }
}
