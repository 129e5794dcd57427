//! End to end: dynamic provisioning. `s3vol csi --controller` driven over its
//! socket as the external-provisioner drives it, and the node plugin as
//! kubelet does: a claim's volume made, published, written, unpublished and
//! deleted, against Garage (keys in the provisioner Secret) and against moto
//! with IAM enforcing a tenant's role and external ID.

use crate::common;
use crate::e2e_csi::{Customers, Garage, publish, publish_request, unpublish};

use std::collections::HashMap;
use std::time::Duration;

use common::proxy::FaultProxy;
use common::{Server, ServerKind};
use s3vol::csi::proto::controller_client::ControllerClient;
use s3vol::csi::proto::node_client::NodeClient;
use s3vol::csi::proto::volume_capability::access_mode::Mode;
use s3vol::csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use s3vol::csi::proto::*;
use tonic::Code;
use tonic::transport::Channel;

fn strings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn capability(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

/// A CreateVolume as the external-provisioner sends it with
/// --extra-create-metadata, for claim `namespace/claim` bound to PV `pv`.
fn claim(
    pv: &str,
    namespace: &str,
    claim: &str,
    parameters: &[(&str, &str)],
    secrets: &[(&str, &str)],
) -> CreateVolumeRequest {
    let mut parameters = strings(parameters);
    parameters.extend(strings(&[
        ("csi.storage.k8s.io/pvc/namespace", namespace),
        ("csi.storage.k8s.io/pvc/name", claim),
        ("csi.storage.k8s.io/pv/name", pv),
    ]));
    CreateVolumeRequest {
        name: pv.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability(Mode::MultiNodeMultiWriter)],
        parameters,
        secrets: strings(secrets),
        ..Default::default()
    }
}

/// Publishes `made` at `target` as kubelet does, with what CreateVolume
/// returned and the node-publish Secret.
async fn publish_made(
    node: &mut NodeClient<Channel>,
    made: &s3vol::csi::proto::Volume,
    target: &std::path::Path,
    secrets: &[(&str, &str)],
) {
    let context: Vec<(&str, &str)> = made
        .volume_context
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let request = publish_request(
        &made.volume_id,
        target,
        Mode::SingleNodeWriter,
        &context,
        secrets,
    );
    publish(node, request).await.unwrap();
}

/// What ControllerGetCapabilities answers.
async fn controller_rpcs(
    controller: &mut ControllerClient<Channel>,
) -> Vec<ControllerServiceCapability> {
    let answer = controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap();
    answer.into_inner().capabilities
}

/// The one thing the controller does: create and delete volumes.
fn create_delete() -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(
            controller_service_capability::Rpc {
                r#type: controller_service_capability::rpc::Type::CreateDeleteVolume as i32,
            },
        )),
    }
}

/// The volume CreateVolume answers `request` with.
async fn create(
    controller: &mut ControllerClient<Channel>,
    request: CreateVolumeRequest,
) -> Result<s3vol::csi::proto::Volume, tonic::Status> {
    let answer = controller.create_volume(request).await?.into_inner();
    Ok(answer.volume.expect("CreateVolume answers with a volume"))
}

async fn delete(
    controller: &mut ControllerClient<Channel>,
    volume_id: &str,
    secrets: &[(&str, &str)],
) -> Result<(), tonic::Status> {
    controller
        .delete_volume(delete_volume_request(volume_id, secrets))
        .await
        .map(drop)
}

/// The StorageClass parameters of volumes under `prefix` in Garage's bucket
/// "vol", through `endpoint` (Garage's, or a proxy's in front of it).
fn garage_class<'a>(
    garage: &'a Garage,
    endpoint: &'a str,
    prefix: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("bucket", "vol"),
        ("prefix", prefix),
        ("endpoint_url", endpoint),
        ("force_path_style", "true"),
        ("region", &garage.server.region),
        ("metadata_ttl", "0"),
    ]
}

/// What must outlive every volume of the tests: beside the volumes, and
/// named so that a careless prefix match would take them.
const NEIGHBOURS: [&str; 4] = [
    "claims/team-a/data-old/keep.txt",
    "claims/team-a/data",
    "claims/team-b/data/keep.txt",
    "data/seed.txt",
];

async fn put_neighbours(server: &Server) {
    for key in NEIGHBOURS {
        server.put("vol", key, b"keep\n".to_vec()).await;
    }
}

async fn assert_neighbours(server: &Server) {
    for key in NEIGHBOURS {
        assert!(server.get("vol", key).await.is_some(), "{key} was deleted");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_claim_is_made_published_written_and_deleted_and_nothing_beside_it_is_touched() {
    let garage = Garage::new().await;
    put_neighbours(&garage.server).await;
    let controller_driver = garage.driver().controller().start();
    let node_driver = garage.driver().start();
    let mut controller = controller_driver.controller().await;
    let mut node = node_driver.node().await;
    let endpoint = garage.server.endpoint.clone();
    let class = garage_class(&garage, &endpoint, "claims");
    let secrets = garage.secrets();

    // The Identity service says it serves a controller; the controller what it does.
    let mut identity =
        s3vol::csi::proto::identity_client::IdentityClient::new(controller_driver.channel().await);
    let capabilities = identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let controller_service = PluginCapability {
        r#type: Some(plugin_capability::Type::Service(
            plugin_capability::Service {
                r#type: plugin_capability::service::Type::ControllerService as i32,
            },
        )),
    };
    assert_eq!(capabilities.capabilities, [controller_service]);
    assert_eq!(controller_rpcs(&mut controller).await, [create_delete()]);

    let request = claim("pvc-0001", "team-a", "data", &class, &secrets);
    let made = create(&mut controller, request.clone()).await.unwrap();
    eprintln!("created {} with {:?}", made.volume_id, made.volume_context);
    assert_eq!(made.volume_context["bucket"], "vol/claims/team-a/data");
    assert!(!made.volume_context.contains_key("prefix"));
    assert_eq!(made.capacity_bytes, 1 << 30);
    assert!(made.volume_id.len() <= 128, "{}", made.volume_id);
    assert_eq!(
        garage.server.keys("vol", "claims/team-a/data/").await,
        ["claims/team-a/data/"]
    );
    // The same call again (the provisioner retries): the same volume.
    let again = create(&mut controller, request.clone()).await.unwrap();
    assert_eq!(again, made);
    // Another PV for the same claim name cannot have the prefix too.
    let twin = claim("pvc-0002", "team-a", "data", &class, &secrets);
    let status = create(&mut controller, twin).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    // Said to the claim's namespace without naming the other claim's volume.
    assert!(
        status.message().contains("another claim's volume"),
        "{status:?}"
    );
    assert!(!status.message().contains("pvc-0001"), "{status:?}");
    // A claim whose prefix holds data that is no volume is refused.
    let occupied = claim("pvc-0003", "team-b", "data", &class, &secrets);
    let status = create(&mut controller, occupied).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("holds objects"), "{status:?}");
    assert!(!status.message().contains("keep.txt"), "{status:?}");

    // The node publishes it as kubelet would, with what CreateVolume returned.
    let target = node_driver.target("pod-a");
    publish_made(&mut node, &made, &target, &secrets).await;
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "a new volume is empty"
    );
    std::fs::create_dir(target.join("results")).unwrap();
    std::fs::write(target.join("results/run-1.csv"), b"a,b\n1,2\n").unwrap();
    std::fs::write(target.join("notes.txt"), common::pattern(3 << 20, 7)).unwrap();
    unpublish(&mut node, &made.volume_id, &target).await;
    let mut keys = garage.server.keys("vol", "claims/team-a/data/").await;
    keys.sort();
    assert_eq!(
        keys,
        [
            "claims/team-a/data/",
            "claims/team-a/data/notes.txt",
            "claims/team-a/data/results/",
            "claims/team-a/data/results/run-1.csv",
        ]
    );

    // An upload left unfinished under the volume goes with it.
    let client = garage.server.client();
    client
        .create_multipart_upload()
        .bucket("vol")
        .key("claims/team-a/data/unfinished.bin")
        .send()
        .await
        .unwrap();
    delete(&mut controller, &made.volume_id, &secrets)
        .await
        .unwrap();
    assert_eq!(
        garage.server.keys("vol", "claims/team-a/data/").await,
        Vec::<String>::new()
    );
    assert_eq!(
        garage.server.pending_uploads("vol", "claims/").await,
        Vec::<String>::new()
    );
    assert_neighbours(&garage.server).await;
    // Deleting it again, or a volume that never was, is done at once.
    delete(&mut controller, &made.volume_id, &secrets)
        .await
        .unwrap();
    delete(&mut controller, "customer-a", &secrets)
        .await
        .unwrap();
    // Once deleted, the claim's name may have its prefix again, as another
    // volume: a late DeleteVolume of the old one (the provisioner asking
    // again) deletes nothing of it.
    let twin = claim("pvc-0002", "team-a", "data", &class, &secrets);
    let remade = create(&mut controller, twin).await.unwrap();
    assert_ne!(remade.volume_id, made.volume_id);
    let new_file = "claims/team-a/data/new.txt";
    garage.server.put("vol", new_file, b"new\n".to_vec()).await;
    delete(&mut controller, &made.volume_id, &secrets)
        .await
        .unwrap();
    assert!(garage.server.get("vol", new_file).await.is_some());
    delete(&mut controller, &remade.volume_id, &secrets)
        .await
        .unwrap();
    assert!(garage.server.get("vol", new_file).await.is_none());
    assert_neighbours(&garage.server).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn a_deletion_cut_short_by_a_crash_is_finished_by_the_next_call() {
    const FILES: usize = 3000;
    let garage = Garage::new().await;
    put_neighbours(&garage.server).await;
    // A slow endpoint: a deletion takes some seconds, to be caught part-way.
    let proxy = FaultProxy::start(&garage.server.endpoint);
    let endpoint = proxy.endpoint();
    let setup = || {
        garage
            .driver()
            .controller()
            .args(&[&format!("--allow-endpoint={endpoint}")])
    };
    let mut driver = setup().start();
    let mut controller = driver.controller().await;
    let class = garage_class(&garage, &endpoint, "claims");
    let secrets = garage.secrets();
    let made = create(
        &mut controller,
        claim("pvc-0009", "team-a", "data", &class, &secrets),
    )
    .await
    .unwrap();
    let objects = (0..FILES).map(|i| {
        (
            format!("claims/team-a/data/d{}/f{i:05}", i % 10),
            b"x".to_vec(),
        )
    });
    garage.server.put_many("vol", objects).await;
    let count = || async { garage.server.keys("vol", "claims/team-a/data/").await.len() };
    assert_eq!(count().await, FILES + 1);

    proxy.delay(Duration::from_millis(400));
    // The provisioner gives up on its call (its timeout); the deletion goes on,
    // and a second call meanwhile is told so rather than started twice.
    let mut hasty = delete_volume_request(&made.volume_id, &secrets);
    hasty.set_timeout(Duration::from_millis(500));
    let status = controller.delete_volume(hasty).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    let status = delete(&mut controller, &made.volume_id, &secrets)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("being deleted"), "{status:?}");
    // Killed part-way: some objects gone, the marker still there.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = count().await;
        if left <= FILES - 1000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{left} objects left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver.restart(setup());
    let after_kill = count().await;
    eprintln!("killed with {after_kill} of {FILES} objects left");
    assert!(after_kill > 1, "the deletion finished before the kill");
    assert!(
        garage
            .server
            .get("vol", "claims/team-a/data/")
            .await
            .is_some()
    );

    // The provisioner calls again; the new controller finishes the deletion.
    proxy.delay(Duration::ZERO);
    let mut controller = driver.controller().await;
    delete(&mut controller, &made.volume_id, &secrets)
        .await
        .unwrap();
    assert_eq!(count().await, 0);
    assert_neighbours(&garage.server).await;
}

fn delete_volume_request(
    volume_id: &str,
    secrets: &[(&str, &str)],
) -> tonic::Request<DeleteVolumeRequest> {
    tonic::Request::new(DeleteVolumeRequest {
        volume_id: volume_id.into(),
        secrets: strings(secrets),
    })
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto; run scripts/test.sh"]
async fn a_tenant_s_role_and_external_id_make_publish_and_delete_its_claim() {
    let customers = Customers::new();
    let controller_driver = customers.driver().controller().start();
    let node_driver = customers.driver().start();
    let mut controller = controller_driver.controller().await;
    let mut node = node_driver.node().await;
    let (role, external_id) = (
        customers.field("tenant_b_arn"),
        customers.field("tenant_b_external_id"),
    );
    // The tenant's Secret, for provisioning and publishing alike: its role and
    // external ID, assumed with the platform's identity.
    let secret = [
        ("role_arn", role.as_str()),
        ("external_id", external_id.as_str()),
    ];
    let endpoint = customers.server.endpoint.clone();
    let class = [
        ("bucket", "vol"),
        ("prefix", "tenant-b/claims"),
        ("endpoint_url", endpoint.as_str()),
        ("sts_endpoint_url", endpoint.as_str()),
        ("force_path_style", "true"),
        ("metadata_ttl", "0"),
    ];
    let made = create(
        &mut controller,
        claim("pvc-00b1", "team-b", "results", &class, &secret),
    )
    .await
    .unwrap();
    let assumed = customers.server.moto_state()["sts"]["AssumedRole"].to_string();
    assert!(assumed.contains("s3vol-provisioner-pvc-00b1"), "{assumed}");
    assert!(assumed.contains(&external_id), "{assumed}");

    let target = node_driver.target("pod-b");
    publish_made(&mut node, &made, &target, &secret).await;
    std::fs::write(target.join("out.txt"), b"by the tenant's pod\n").unwrap();
    assert_eq!(
        std::fs::read(target.join("out.txt")).unwrap(),
        b"by the tenant's pod\n"
    );
    unpublish(&mut node, &made.volume_id, &target).await;

    let lister = tenant_client(&customers, &role, &external_id).await;
    let keys = |prefix: &'static str| {
        let lister = lister.clone();
        async move {
            let page = lister
                .list_objects_v2()
                .bucket("vol")
                .prefix(prefix)
                .send()
                .await
                .unwrap();
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        keys("tenant-b/claims/").await,
        [
            "tenant-b/claims/team-b/results/",
            "tenant-b/claims/team-b/results/out.txt"
        ]
    );
    delete(&mut controller, &made.volume_id, &secret)
        .await
        .unwrap();
    assert_eq!(keys("tenant-b/claims/").await, Vec::<String>::new());
    assert_eq!(keys("tenant-b/hello.txt").await, ["tenant-b/hello.txt"]);

    // A prefix outside the tenant's policy: refused, the action named, nothing made.
    let outside = [("prefix", "root/claims")];
    let mut class_outside = class.to_vec();
    class_outside.retain(|(k, _)| *k != "prefix");
    class_outside.extend(outside);
    let status = create(
        &mut controller,
        claim("pvc-00b2", "team-b", "x", &class_outside, &secret),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("s3:PutObject"), "{status:?}");
    // The customer's reader role may list root/: nothing was made there.
    let reader = tenant_client(
        &customers,
        &customers.field("role_arn"),
        &customers.field("external_id"),
    )
    .await;
    let listed = reader
        .list_objects_v2()
        .bucket("vol")
        .prefix("root/claims/")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count(), Some(0), "{listed:?}");
    // Another tenant's external ID: STS refuses, and the refusal says so.
    let wrong = [
        ("role_arn", role.as_str()),
        ("external_id", "someone-elses-id"),
    ];
    let status = create(
        &mut controller,
        claim("pvc-00b3", "team-b", "y", &class, &wrong),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("external ID"), "{status:?}");
    assert!(!controller_driver.log_text().contains(&external_id));
}

/// An S3 client as the tenant's role, to see what its volumes left.
async fn tenant_client(customers: &Customers, role: &str, external_id: &str) -> aws_sdk_s3::Client {
    let platform = aws_sdk_sts::config::Credentials::new(
        customers.field("access_key"),
        customers.field("secret_key"),
        None,
        None,
        "test",
    );
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::config::Builder::new()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("us-east-1"))
            .endpoint_url(&customers.server.endpoint)
            .credentials_provider(platform)
            .build(),
    );
    let session = sts
        .assume_role()
        .role_arn(role)
        .role_session_name("test-checks")
        .external_id(external_id)
        .send()
        .await
        .unwrap();
    let keys = session.credentials().unwrap();
    let credentials = aws_sdk_s3::config::Credentials::new(
        keys.access_key_id(),
        keys.secret_access_key(),
        Some(keys.session_token().to_string()),
        None,
        "test",
    );
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&customers.server.endpoint)
            .force_path_style(true)
            .credentials_provider(credentials)
            .build(),
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto; run scripts/test.sh"]
async fn a_volume_of_a_versioned_bucket_is_deleted_version_by_version_when_asked() {
    let server = Server::start(ServerKind::Moto);
    server.create_bucket("ver").await;
    server.enable_versioning("ver").await;
    let driver = crate::e2e_csi::DriverSetup::default()
        .endpoint_of(&server)
        .controller()
        .start();
    let mut controller = driver.controller().await;
    let secrets = [
        ("access_key_id", "testing"),
        ("secret_access_key", "testing"),
    ];
    for (pv, versions) in [("pvc-keep", "false"), ("pvc-gone", "true")] {
        let class = [
            ("bucket", "ver"),
            ("endpoint_url", server.endpoint.as_str()),
            ("force_path_style", "true"),
            ("volume_name", "${pv.name}"),
            ("delete_versions", versions),
        ];
        let made = create(&mut controller, claim(pv, "ns", "c", &class, &secrets))
            .await
            .unwrap();
        let client = server.client();
        for round in 0..3 {
            server
                .put("ver", &format!("{pv}/a.txt"), format!("v{round}"))
                .await;
        }
        server.put("ver", &format!("{pv}/b.txt"), "b").await;
        client
            .delete_object()
            .bucket("ver")
            .key(format!("{pv}/b.txt"))
            .send()
            .await
            .unwrap();
        delete(&mut controller, &made.volume_id, &secrets)
            .await
            .unwrap();
        assert_eq!(
            server.keys("ver", &format!("{pv}/")).await,
            Vec::<String>::new()
        );
        let versions = client
            .list_object_versions()
            .bucket("ver")
            .prefix(format!("{pv}/"))
            .send()
            .await
            .unwrap();
        let kept = versions.versions().len() + versions.delete_markers().len();
        eprintln!("{pv}: {kept} versions and delete markers left");
        if pv == "pvc-gone" {
            assert_eq!(kept, 0, "{versions:?}");
        } else {
            // Deleted as a DELETE deletes: the versions stay, hidden.
            assert!(versions.versions().len() >= 5, "{versions:?}");
            // They are data: a volume whose deletion would delete every
            // version is never made where they are.
            let mut class = class.to_vec();
            class.retain(|(k, _)| *k != "delete_versions");
            class.push(("delete_versions", "true"));
            let status = create(&mut controller, claim(pv, "ns", "c", &class, &secrets))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(status.message().contains("holds versions"), "{status:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Garage; run scripts/test.sh"]
async fn the_controller_refuses_what_it_cannot_do_by_field() {
    let garage = Garage::new().await;
    let driver = garage.driver().controller().start();
    let mut controller = driver.controller().await;
    let endpoint = garage.server.endpoint.clone();
    let class = garage_class(&garage, &endpoint, "claims");
    let secrets = garage.secrets();
    let refused = |status: tonic::Status, code: Code, field: &str| {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    };

    let mut block = claim("pvc-1", "ns", "c", &class, &secrets);
    block.volume_capabilities[0].access_type = Some(AccessType::Block(BlockVolume::default()));
    let status = create(&mut controller, block).await.unwrap_err();
    refused(status, Code::InvalidArgument, "volume_capabilities block");
    let mut clone = claim("pvc-1", "ns", "c", &class, &secrets);
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: "other".into(),
            },
        )),
    });
    let status = create(&mut controller, clone).await.unwrap_err();
    refused(status, Code::InvalidArgument, "volume_content_source");
    let mut elsewhere = class.clone();
    elsewhere.push(("endpoint_url", "http://127.0.0.1:1"));
    let status = create(
        &mut controller,
        claim("pvc-1", "ns", "c", &elsewhere, &secrets),
    )
    .await
    .unwrap_err();
    refused(status, Code::InvalidArgument, "parameter endpoint_url");
    let status = create(&mut controller, claim("pvc-1", "ns", "c", &class, &[]))
        .await
        .unwrap_err();
    refused(status, Code::InvalidArgument, "provisioner Secret");
    let status = controller
        .create_snapshot(CreateSnapshotRequest {
            source_volume_id: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(status, Code::Unimplemented, "source_volume_id");
    let status = controller
        .controller_expand_volume(ControllerExpandVolumeRequest::default())
        .await
        .unwrap_err();
    refused(status, Code::Unimplemented, "capacity_range");
    let status = delete(&mut controller, "", &secrets).await.unwrap_err();
    refused(status, Code::InvalidArgument, "volume_id");
    // The capabilities a FUSE volume serves: every filesystem mode, no block.
    let made = create(&mut controller, claim("pvc-1", "ns", "c", &class, &secrets))
        .await
        .unwrap();
    let validate = |capabilities: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
        volume_id: made.volume_id.clone(),
        volume_capabilities: capabilities,
        ..Default::default()
    };
    let every_mode = [
        Mode::SingleNodeWriter,
        Mode::SingleNodeReaderOnly,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter,
        Mode::MultiNodeMultiWriter,
        Mode::SingleNodeSingleWriter,
        Mode::SingleNodeMultiWriter,
    ]
    .map(capability)
    .to_vec();
    let answer = controller
        .validate_volume_capabilities(validate(every_mode))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.confirmed.unwrap().volume_capabilities.len(), 7);
    let mut block = capability(Mode::SingleNodeWriter);
    block.access_type = Some(AccessType::Block(BlockVolume::default()));
    let answer = controller
        .validate_volume_capabilities(validate(vec![block]))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.confirmed.is_none());
    assert!(answer.message.contains("block"), "{answer:?}");
    let mut unknown = validate(vec![capability(Mode::SingleNodeWriter)]);
    unknown.volume_id = "customer-a".into();
    let status = controller
        .validate_volume_capabilities(unknown)
        .await
        .unwrap_err();
    refused(status, Code::NotFound, "customer-a");
    // A volume whose marker is not this one's is never deleted: here, the ID
    // of a volume made at another prefix, pointed at this one's.
    let forged = made.volume_id.replace("claims/ns/c", "data");
    let status = delete(&mut controller, &forged, &secrets)
        .await
        .unwrap_err();
    refused(status, Code::FailedPrecondition, "nothing was deleted");
    assert!(garage.server.get("vol", "data/seed.txt").await.is_some());
    garage.server.put("vol", "data/", b"".to_vec()).await;
    let status = delete(&mut controller, &forged, &secrets)
        .await
        .unwrap_err();
    refused(status, Code::FailedPrecondition, "nothing was deleted");
    assert!(garage.server.get("vol", "data/seed.txt").await.is_some());
    // A volume whose marker was removed: what is left stays, and is said.
    let marked = claim("pvc-2", "ns", "d", &class, &secrets);
    let marked = create(&mut controller, marked).await.unwrap();
    garage
        .server
        .put("vol", "claims/ns/d/kept.txt", b"k".to_vec())
        .await;
    garage
        .server
        .client()
        .delete_object()
        .bucket("vol")
        .key("claims/ns/d/")
        .send()
        .await
        .unwrap();
    let status = delete(&mut controller, &marked.volume_id, &secrets)
        .await
        .unwrap_err();
    refused(
        status,
        Code::FailedPrecondition,
        "holds objects but no marker",
    );
    assert!(
        garage
            .server
            .get("vol", "claims/ns/d/kept.txt")
            .await
            .is_some()
    );
    delete(&mut controller, &made.volume_id, &secrets)
        .await
        .unwrap();
}

/// The controller's manifests (validated against the API's schemas with the
/// others by `e2e_csi`) against the controller itself: its socket, its
/// options, the least its containers hold, and the example StorageClass and
/// claim as CreateVolume takes them.
#[test]
#[ignore = "needs kubernetes-validate; run scripts/test.sh"]
fn the_controller_manifests_fit_the_controller_and_the_example_claim_provisions() {
    use s3vol::csi::service::DRIVER_NAME;
    let (_, documents) = crate::e2e_csi::manifests();
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        documents.iter().filter(|d| d["kind"] == kind).collect()
    };
    let strings_of = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let deployment = of_kind("Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "s3vol-csi-controller")
        .expect("a controller Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = |name: &str| {
        pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    };
    let s3vol_args = strings_of(&container("s3vol")["args"]);
    let provisioner_args = strings_of(&container("csi-provisioner")["args"]);
    assert!(
        s3vol_args.contains(&"--controller".to_string()),
        "{s3vol_args:?}"
    );
    assert!(s3vol_args.contains(&"--endpoint=unix:///csi/csi.sock".to_string()));
    assert!(provisioner_args.contains(&"--csi-address=/csi/csi.sock".to_string()));
    assert!(provisioner_args.contains(&"--extra-create-metadata".to_string()));
    // No API token for s3vol; not root; nothing privileged.
    assert_eq!(pod["automountServiceAccountToken"], false);
    let s3vol_mounts = container("s3vol")["volumeMounts"].to_string();
    assert!(!s3vol_mounts.contains("serviceaccount"), "{s3vol_mounts}");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["hostPID"].is_null() && pod["hostNetwork"].is_null());
    // The provisioner gets Secrets by name only, and only where a Role bound
    // to it in the Secrets' namespace says.
    let bound_roles: Vec<&str> = of_kind("ClusterRoleBinding")
        .into_iter()
        .chain(of_kind("RoleBinding"))
        .filter(|b| b["subjects"][0]["name"] == "s3vol-csi-controller")
        .map(|b| b["roleRef"]["name"].as_str().unwrap())
        .collect();
    for role in of_kind("ClusterRole").into_iter().chain(of_kind("Role")) {
        if !bound_roles.contains(&role["metadata"]["name"].as_str().unwrap()) {
            continue;
        }
        for rule in role["rules"].as_array().unwrap() {
            if strings_of(&rule["resources"]).contains(&"secrets".to_string()) {
                assert_eq!(role["kind"], "Role", "{role}");
                assert_eq!(strings_of(&rule["verbs"]), ["get"], "{role}");
            }
        }
    }

    // The example StorageClass and claim, as the provisioner would call with
    // them: its Secret parameters resolved (and taken out), the claim's name
    // added.
    let rules = s3vol::csi::request::Rules {
        endpoints: s3vol_args
            .iter()
            .filter_map(|a| a.strip_prefix("--allow-endpoint="))
            .map(|url| s3vol::names::endpoint_url(url).unwrap())
            .collect(),
        allow_driver_credentials: s3vol_args.contains(&"--allow-driver-credentials".to_string()),
    };
    let classes: Vec<_> = of_kind("StorageClass")
        .into_iter()
        .filter(|c| c["provisioner"] == DRIVER_NAME)
        .collect();
    assert!(!classes.is_empty());
    let claims = of_kind("PersistentVolumeClaim");
    for class in classes {
        let name = class["metadata"]["name"].as_str().unwrap();
        let claim = claims
            .iter()
            .find(|c| c["spec"]["storageClassName"] == name)
            .unwrap_or_else(|| panic!("no claim of {name}"));
        let namespace = claim["metadata"]["namespace"].as_str().unwrap();
        let parameters = class["parameters"].as_object().unwrap();
        // The templates as Kubernetes resolves them for this claim.
        let resolve = |key: &str| {
            parameters[key]
                .as_str()
                .unwrap()
                .replace("${pvc.namespace}", namespace)
                .replace("${pvc.name}", claim["metadata"]["name"].as_str().unwrap())
        };
        let (secret_name, secret_namespace) = (
            resolve("csi.storage.k8s.io/provisioner-secret-name"),
            resolve("csi.storage.k8s.io/provisioner-secret-namespace"),
        );
        // Kept where tenants cannot write, and one per tenant namespace.
        assert_ne!(secret_namespace, namespace);
        assert_eq!(secret_name, namespace);
        let secret = of_kind("Secret")
            .into_iter()
            .find(|s| {
                s["metadata"]["name"] == secret_name.as_str()
                    && s["metadata"]["namespace"] == secret_namespace.as_str()
            })
            .unwrap_or_else(|| panic!("no Secret {secret_name} in {secret_namespace}"));
        let readers = of_kind("RoleBinding")
            .into_iter()
            .filter(|b| b["metadata"]["namespace"] == secret_namespace.as_str())
            .map(|b| b["subjects"][0]["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        assert_eq!(readers, ["s3vol-csi-controller"]);
        let mut passed: HashMap<String, String> = parameters
            .iter()
            .filter(|(k, _)| !k.contains("-secret-"))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        passed.insert("csi.storage.k8s.io/pvc/namespace".into(), namespace.into());
        passed.insert(
            "csi.storage.k8s.io/pvc/name".into(),
            claim["metadata"]["name"].as_str().unwrap().into(),
        );
        passed.insert("csi.storage.k8s.io/pv/name".into(), "pvc-4b0e".into());
        let mode = match claim["spec"]["accessModes"][0].as_str().unwrap() {
            "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
            "ReadWriteMany" => Mode::MultiNodeMultiWriter,
            _ => Mode::SingleNodeWriter,
        };
        let mut capability = capability(mode);
        if let Some(AccessType::Mount(mount)) = capability.access_type.as_mut() {
            mount.mount_flags = strings_of(&class["mountOptions"]);
        }
        let request = CreateVolumeRequest {
            name: "pvc-4b0e".into(),
            volume_capabilities: vec![capability],
            parameters: passed,
            secrets: secret["stringData"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect(),
            ..Default::default()
        };
        let plan = s3vol::csi::provision::plan(&request, &rules)
            .unwrap_or_else(|e| panic!("{name}: {}", e.0));
        eprintln!(
            "{name}: claim {namespace}/{} is volume {}",
            claim["metadata"]["name"], plan.volume_id
        );
    }
}

/// The controller needs no root: as `nobody` it serves, and on SIGTERM it
/// stops and takes its socket with it.
#[tokio::test(flavor = "multi_thread")]
async fn the_controller_runs_as_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("plugin");
    std::fs::create_dir(&plugin).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(&plugin, Some(65534.into()), Some(65534.into())).unwrap();
    let socket = plugin.join("csi.sock");
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::binary())
        .args(["csi", "--controller", "--endpoint"])
        .arg(format!("unix://{}", socket.display()))
        .env_clear()
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = crate::e2e_csi::socket_channel(socket).await;
    let mut controller = ControllerClient::new(channel);
    assert_eq!(controller_rpcs(&mut controller).await, [create_delete()]);
    // SAFETY: kill(2) on the child this test started, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!plugin.join("csi.sock").exists());
}
