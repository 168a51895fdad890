//! Network devices through netlink (filled in by the netdev work).
