//! The plugin API (plugin.proto) on the plugin socket: what orchestrators and
//! `membrane-cni` call.

use std::sync::Arc;

use membrane_proto::v1 as pb;
use membrane_proto::v1::plugin_server::Plugin;
use tonic::{Request, Response, Status};

use super::{validate_add, EndpointManager, LocalEndpoint};
// The conversions moved to endpoints::proto; the old paths keep working.
pub use super::proto::{detail, mac_string};

pub struct PluginService {
    pub endpoints: Arc<EndpointManager>,
    pub node_name: String,
}

fn add_response(ep: &LocalEndpoint, node_name: &str) -> pb::AddEndpointResponse {
    pb::AddEndpointResponse {
        endpoint: Some(detail(ep, node_name)),
        interfaces: vec![
            pb::EndpointInterface {
                name: ep.host_ifname.clone(),
                mac: mac_string(&ep.link.host_mac),
                sandbox: String::new(),
            },
            pb::EndpointInterface {
                name: ep.record.ifname.clone(),
                mac: mac_string(&ep.link.container_mac),
                sandbox: ep.record.netns.clone(),
            },
        ],
        ips: vec![pb::EndpointIp {
            address: format!("{}/32", ep.record.ipv4),
            gateway: ep.gateway.to_string(),
            interface: 1,
        }],
        routes: vec![pb::EndpointRoute {
            dst: "0.0.0.0/0".into(),
            gw: ep.gateway.to_string(),
        }],
        mtu: ep.mtu,
    }
}

#[tonic::async_trait]
impl Plugin for PluginService {
    async fn add_endpoint(
        &self,
        req: Request<pb::AddEndpointRequest>,
    ) -> Result<Response<pb::AddEndpointResponse>, Status> {
        let r = req.into_inner();
        let labels = r.labels.into_iter().collect();
        let add = validate_add(&r.container_id, &r.netns, &r.ifname, &labels)?;
        let ep = self.endpoints.add(add).await?;
        Ok(Response::new(add_response(&ep, &self.node_name)))
    }

    async fn del_endpoint(
        &self,
        req: Request<pb::DelEndpointRequest>,
    ) -> Result<Response<pb::DelEndpointResponse>, Status> {
        let r = req.into_inner();
        if r.container_id.is_empty() {
            return Err(Status::invalid_argument(
                "the container id is empty (CNI_CONTAINERID)",
            ));
        }
        let deleted = self.endpoints.del(&r.container_id, &r.ifname).await?;
        Ok(Response::new(pb::DelEndpointResponse { deleted }))
    }

    async fn check_endpoint(
        &self,
        req: Request<pb::CheckEndpointRequest>,
    ) -> Result<Response<pb::AddEndpointResponse>, Status> {
        let r = req.into_inner();
        let ep = self
            .endpoints
            .check(&r.container_id, &r.ifname, &r.netns)
            .await?;
        Ok(Response::new(add_response(&ep, &self.node_name)))
    }

    async fn list_endpoints(
        &self,
        _: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::EndpointListResponse>, Status> {
        let endpoints = self
            .endpoints
            .list_live()
            .iter()
            .map(|ep| detail(ep, &self.node_name))
            .collect();
        Ok(Response::new(pb::EndpointListResponse { endpoints }))
    }
}
