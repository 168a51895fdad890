//! Cluster tests: real `membrane agent` processes in lab namespaces, driven through the CLI.
//! Numbered by topic, as openraft's tests are: t10 forming, t20 joining, t30 trust, t40
//! faults, t50 bad state, t60 gossip and autopilot, t70 endpoints and the datapath. Each
//! test makes its own lab and removes it, even on panic.

mod support;
mod t10_form;
mod t12_concurrent_writes;
mod t13_node_remove;
mod t14_join_via_follower;
mod t20_join_refused;
mod t21_join_guard;
mod t30_untrusted_peer;
mod t31_membership_authz;
mod t33_ca_key_on_voters;
mod t34_cert_renewal;
mod t35_poison_command;
mod t36_ca_rotation;
mod t40_leader_kill;
mod t41_whole_cluster_kill;
mod t42_leader_pause;
mod t50_bad_state;
mod t60_autopilot;
mod t61_gossip_injector;
mod t62_partition;
mod t63_gossip_rotation;
mod t64_gossip_removed_node;
mod t70_endpoint_connectivity;
mod t71_agent_restart_stream;
mod t72_endpoint_delete;
mod t73_node_leaves_ipcache;
mod t74_cni_bad_input;
mod t75_pod_cidr_exhausted;
mod t76_add_collisions;
mod t77_del_queued_while_agent_down;
mod t78_masquerade;
mod t79_monitor_metrics;
mod t80_policy_allow_one_client;
mod t81_policy_deny_wins;
mod t82_policy_cidr_entities;
mod t83_policy_established_connections;
mod t84_policy_revision_wait_and_bad_input;
mod t85_policy_drop_observed;
mod t86_endpoint_address_reuse;
mod t87_fail_closed_l3;
mod t88_overlay_spoofing;
mod t89_control_ports;
mod t90_encryption_capture;
mod t91_encryption_rotation;
mod t92_tunnel_forgery;
