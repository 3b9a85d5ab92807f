//! The EndpointSlice mode's route: the Service a group names and the one endpoint its slice
//! lists, emitted by the acting replica when either changes.

use super::*;
use hapod_core::{Endpoint, PodView, Route, Routing};

fn serving(name: &str, created: i64) -> PodView {
    let mut view = pod(name, created);
    view.routing = Some(Box::new(Routing {
        service: "web".into(),
        node: Some("node-a".into()),
    }));
    view
}

fn routes(actions: &[Action]) -> Vec<&Route> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Route(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The pod the last route of `actions` sends traffic to, with its ready condition.
fn routed(actions: &[Action]) -> Option<(String, bool)> {
    let route = routes(actions).last().copied().expect("no route emitted");
    assert_eq!(route.service.as_deref(), Some("web"));
    route
        .endpoint
        .as_ref()
        .map(|e: &Endpoint| (e.pod.name.clone(), e.ready))
}

#[test]
fn the_route_names_a_pod_only_once_its_promotion_is_acknowledged() {
    let (mut ctl, first) = Ctl::acting([serving("a", 1), serving("b", 2)]);
    // Before the promotion's answer: the group has no active, the slice lists nobody.
    assert_eq!(routed(&first), None);
    let promote = single_write(&first);
    let (answered, _) = ctl.answer(&promote);
    assert_eq!(routed(&answered), Some(("a".into(), true)));
    let endpoint = routes(&answered)[0].endpoint.clone().unwrap();
    assert_eq!(endpoint.pod.uid, "a-uid");
    assert_eq!(endpoint.ips, ctl.api.pods["a"].pod_ips);
    assert_eq!(endpoint.node.as_deref(), Some("node-a"));
}

#[test]
fn a_force_deleted_active_leaves_the_route_and_its_successor_takes_it() {
    let (mut ctl, first) = Ctl::acting([active(serving("a", 1), Some(3)), serving("b", 2)]);
    assert_eq!(routed(&first), Some(("a".into(), true)));
    ctl.settle(first);
    let gone = ctl.api.remove("a").unwrap();
    let actions = ctl.feed(gone);
    assert_eq!(
        routed(&actions),
        None,
        "the vanished pod must leave the slice at once"
    );
    let all = ctl.settle(actions);
    assert_eq!(routed(&all), Some(("b".into(), true)));
    // Each change once: no route repeated while nothing changed.
    assert_eq!(routes(&all).len(), 2, "{:?}", routes(&all));
}

#[test]
fn a_terminating_active_stays_listed_not_ready_until_the_successor_is_labeled() {
    let (mut ctl, first) = Ctl::acting([active(serving("a", 1), Some(3)), serving("b", 2)]);
    ctl.settle(first);
    let ev = ctl.api.modify("a", |p| p.deleting = true).unwrap();
    let actions = ctl.feed(ev);
    let route = routes(&actions)[0].endpoint.clone().unwrap();
    assert_eq!(route.pod.name, "a");
    assert!(
        !route.ready && route.terminating && route.serving,
        "{route:?}"
    );
    let all = ctl.settle(actions);
    assert_eq!(routed(&all), Some(("b".into(), true)));
}

#[test]
fn groups_that_name_no_service_emit_no_route() {
    let (mut ctl, first) = Ctl::acting([active(pod("a", 1), Some(3)), pod("b", 2)]);
    let mut all = ctl.settle(first);
    let gone = ctl.api.remove("a").unwrap();
    let actions = ctl.feed(gone);
    all.extend(ctl.settle(actions));
    assert!(routes(&all).is_empty(), "{:?}", routes(&all));
}

#[test]
fn dropping_the_annotation_routes_to_no_service_once() {
    let (mut ctl, first) = Ctl::acting([active(serving("a", 1), Some(3)), serving("b", 2)]);
    ctl.settle(first);
    let ev = ctl.api.modify("a", |p| p.routing = None).unwrap();
    let actions = ctl.feed(ev);
    assert!(
        routes(&actions)
            .iter()
            .all(|r| r.service.as_deref() == Some("web")),
        "b still names the Service: {:?}",
        routes(&actions)
    );
    let ev = ctl.api.modify("b", |p| p.routing = None).unwrap();
    let actions = ctl.feed(ev);
    let route = routes(&actions);
    assert_eq!(route.len(), 1);
    assert_eq!(route[0].service, None, "the slice written before must go");
    let ev = ctl.api.modify("b", |p| p.ready = false).unwrap();
    assert!(routes(&ctl.feed(ev)).is_empty());
}

#[test]
fn only_the_acting_replica_routes_and_a_new_term_routes_again() {
    let (mut ctl, first) = Ctl::acting([active(serving("a", 1), Some(3)), serving("b", 2)]);
    ctl.settle(first);
    assert!(routes(&ctl.feed(Event::Leadership(None))).is_empty());
    let ev = ctl.api.modify("a", |p| p.ready = false).unwrap();
    assert!(
        routes(&ctl.feed(ev)).is_empty(),
        "a standby replica wrote a route"
    );
    let actions = ctl.feed(Event::Leadership(Some(2)));
    // The not-Ready active is still labeled (its demotion is planned in the same step):
    // the new term states the route it finds, not-Ready.
    assert_eq!(routed(&actions), Some(("a".into(), false)));
}
