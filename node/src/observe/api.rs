//! The monitor call of the local API: this node's flow events, filtered per subscriber.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use membrane_proto::v1 as pb;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::monitor::{lost_notice, Filter, Monitor, MonitorStats};

/// The stream of `membrane monitor`.
pub type FlowStream = Pin<Box<dyn Stream<Item = Result<pb::FlowEventMessage, Status>> + Send>>;

/// What the observe slice of the local API reads: the event stream (silent until the
/// datapath is up).
pub struct ObserveApi {
    pub monitor: Monitor,
}

impl ObserveApi {
    pub fn monitor(&self, req: pb::MonitorRequest) -> Result<FlowStream, Status> {
        let filter = filter_of(&req)?;
        let stats = self.monitor.stats().clone();
        let rx = self.monitor.subscribe();
        let events = tokio_stream::wrappers::BroadcastStream::new(rx)
            .filter_map(move |e| deliver(e, &stats, &filter).map(Ok));
        Ok(Box::pin(events))
    }
}

fn filter_of(req: &pb::MonitorRequest) -> Result<Filter, Status> {
    Filter::from_request(req).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown monitor type {}; use drop, policy, trace or all",
            req.r#type
        ))
    })
}

/// What a subscriber gets for one item of its channel: the event if its filter passes it;
/// when it fell behind, a notice of how much it missed (counted), and it goes on.
fn deliver(
    item: Result<Arc<pb::FlowEventMessage>, BroadcastStreamRecvError>,
    stats: &MonitorStats,
    filter: &Filter,
) -> Option<pb::FlowEventMessage> {
    let msg = match item {
        Ok(m) => (*m).clone(),
        Err(BroadcastStreamRecvError::Lagged(n)) => {
            stats.lagged.fetch_add(n, Ordering::Relaxed);
            lost_notice(n)
        }
    };
    filter.matches(&msg).then_some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_event() -> Arc<pb::FlowEventMessage> {
        Arc::new(pb::FlowEventMessage {
            kind: membrane_ebpf::EventKind::Drop.as_str().into(),
            endpoint_id: 3,
            ..Default::default()
        })
    }

    fn filter(t: pb::MonitorType) -> Filter {
        filter_of(&pb::MonitorRequest {
            r#type: t as i32,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn unknown_types_are_refused() {
        let e = filter_of(&pb::MonitorRequest {
            r#type: 99,
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("99"), "{}", e.message());
    }

    #[test]
    fn events_pass_their_filter_only() {
        let stats = MonitorStats::default();
        assert!(deliver(Ok(drop_event()), &stats, &filter(pb::MonitorType::Drop)).is_some());
        assert!(deliver(Ok(drop_event()), &stats, &filter(pb::MonitorType::All)).is_some());
        assert!(deliver(Ok(drop_event()), &stats, &filter(pb::MonitorType::Trace)).is_none());
        assert_eq!(stats.lagged.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_lagging_subscriber_is_told_and_counted() {
        let stats = MonitorStats::default();
        let f = filter(pb::MonitorType::Trace);
        let m = deliver(Err(BroadcastStreamRecvError::Lagged(7)), &stats, &f).unwrap();
        assert_eq!(m.lost, 7);
        deliver(Err(BroadcastStreamRecvError::Lagged(3)), &stats, &f).unwrap();
        assert_eq!(stats.lagged.load(Ordering::Relaxed), 10);
    }
}
