//! Which events a subscriber gets (`MonitorRequest`): pure, no IO.

use membrane_ebpf::EventKind;
use membrane_proto::v1 as pb;

/// Which kinds of events a subscriber wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KindFilter {
    #[default]
    All,
    Drop,
    Policy,
    Trace,
}

/// A subscriber's filter (MonitorRequest); empty fields match everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub endpoint_id: Option<u32>,
    /// Either side's identity.
    pub identity: Option<u32>,
    pub kind: KindFilter,
}

impl Filter {
    /// The filter a request asks for; None when it names a type this build does not know.
    pub fn from_request(req: &pb::MonitorRequest) -> Option<Filter> {
        let kind = match pb::MonitorType::try_from(req.r#type).ok()? {
            pb::MonitorType::All => KindFilter::All,
            pb::MonitorType::Drop => KindFilter::Drop,
            pb::MonitorType::Policy => KindFilter::Policy,
            pb::MonitorType::Trace => KindFilter::Trace,
        };
        Some(Filter {
            endpoint_id: (req.endpoint_id != 0).then_some(req.endpoint_id),
            identity: (req.identity != 0).then_some(req.identity),
            kind,
        })
    }

    /// Whether `m` passes. Lost notices always pass: the subscriber must know about gaps.
    pub fn matches(&self, m: &pb::FlowEventMessage) -> bool {
        if m.lost != 0 {
            return true;
        }
        let kind_ok = match self.kind {
            KindFilter::All => true,
            KindFilter::Drop => m.kind == EventKind::Drop.as_str(),
            KindFilter::Policy => m.kind == EventKind::PolicyVerdict.as_str(),
            KindFilter::Trace => m.kind == EventKind::Trace.as_str(),
        };
        kind_ok
            && self.endpoint_id.is_none_or(|id| m.endpoint_id == id)
            && self
                .identity
                .is_none_or(|id| m.remote_identity == id || m.endpoint_identity == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::monitor::testing::{event, web, T};
    use crate::observe::monitor::{decorate, lost_notice};
    use membrane_ebpf::{Direction, Reason};

    #[test]
    fn filters_by_kind_endpoint_and_either_identity() {
        let drop = decorate(
            &event(EventKind::Drop, Direction::Egress, Reason::DropPolicyDenied),
            T,
            Some(&web()),
            vec![],
            String::new(),
        );
        let trace = decorate(
            &event(EventKind::Trace, Direction::Egress, Reason::ForwardedLocal),
            T,
            Some(&web()),
            vec![],
            String::new(),
        );
        let req = |endpoint_id, identity, t: pb::MonitorType| pb::MonitorRequest {
            endpoint_id,
            identity,
            r#type: t as i32,
        };
        let all = Filter::from_request(&req(0, 0, pb::MonitorType::All)).unwrap();
        assert!(all.matches(&drop) && all.matches(&trace));
        let drops = Filter::from_request(&req(0, 0, pb::MonitorType::Drop)).unwrap();
        assert!(drops.matches(&drop) && !drops.matches(&trace));
        let traces = Filter::from_request(&req(0, 0, pb::MonitorType::Trace)).unwrap();
        assert!(!traces.matches(&drop) && traces.matches(&trace));
        let policy = Filter::from_request(&req(0, 0, pb::MonitorType::Policy)).unwrap();
        assert!(!policy.matches(&drop) && !policy.matches(&trace));
        assert!(Filter::from_request(&req(1234, 0, pb::MonitorType::All))
            .unwrap()
            .matches(&drop));
        assert!(!Filter::from_request(&req(1, 0, pb::MonitorType::All))
            .unwrap()
            .matches(&drop));
        // Remote (300) and local (200) identities both match; another does not.
        for (id, want) in [(300, true), (200, true), (5, false)] {
            let f = Filter::from_request(&req(0, id, pb::MonitorType::All)).unwrap();
            assert_eq!(f.matches(&drop), want, "identity {id}");
        }
        // A gap is always reported, whatever the filter.
        assert!(Filter::from_request(&req(1, 5, pb::MonitorType::Policy))
            .unwrap()
            .matches(&lost_notice(1)));
        assert!(Filter::from_request(&pb::MonitorRequest {
            r#type: 99,
            ..Default::default()
        })
        .is_none());
    }
}
