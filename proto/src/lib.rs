//! Pillion's control-plane API and the demo service, generated from `proto/`.

pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("pillion.discovery.v1");
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("pillion.identity.v1");
    }
}

pub mod policy {
    pub mod v1 {
        tonic::include_proto!("pillion.policy.v1");
    }
}

pub mod report {
    pub mod v1 {
        tonic::include_proto!("pillion.report.v1");
    }
}

pub mod demo {
    pub mod v1 {
        tonic::include_proto!("pillion.demo.v1");
    }
}
pub mod codec;
pub mod names;
