//! The sled store: openraft's storage test suite, and what a restart must preserve.

mod common;
use common::{bootstrap_cmd, token};

use std::collections::BTreeSet;
use std::io::Cursor;

use membrane_consensus::registry::{Command, Response};
use membrane_consensus::store::{self, LogStore, StateMachineStore, StoreError};
use membrane_consensus::TypeConfig;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    StorageError, Vote,
};
use tempfile::TempDir;

/// Builds a store in a fresh temporary directory; the directory lives as long as the guard.
struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = TempDir::new().expect("create temp dir");
        let (log, sm) = store::open(dir.path()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn t10_openraft_storage_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// Entries 1..=n of term 1, each creating token `t<i>`.
fn token_entries(n: u64) -> Vec<Entry<TypeConfig>> {
    (1..=n)
        .map(|i| {
            normal(
                1,
                i,
                Command::CreateToken {
                    token: token(&format!("t{i}")),
                },
            )
        })
        .collect()
}

/// Appends through the real trait (callback included), the way openraft does.
async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    // LogFlushed cannot be built outside openraft; RaftLogStorageExt provides a blocking
    // append that builds one and waits for it.
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.expect("append");
}

#[tokio::test]
async fn t20_log_vote_and_committed_survive_reopen() {
    let dir = TempDir::new().expect("temp dir");
    {
        let (mut log, _sm) = store::open(dir.path()).expect("open");
        append(&mut log, token_entries(5)).await;
        log.save_vote(&Vote::new(3, 2)).await.expect("save vote");
        log.save_committed(Some(log_id(1, 4)))
            .await
            .expect("save committed");
        log.purge(log_id(1, 1)).await.expect("purge");
        log.truncate(log_id(1, 5)).await.expect("truncate");
    }
    let (mut log, _sm) = store::open(dir.path()).expect("reopen");
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1)));
    assert_eq!(state.last_log_id, Some(log_id(1, 4)));
    let got = log.try_get_log_entries(0..100).await.expect("read");
    let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![2, 3, 4]);
    match &got[0].payload {
        EntryPayload::Normal(Command::CreateToken { token }) => assert_eq!(token.id, "t2"),
        other => panic!("unexpected payload {other:?}"),
    }
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 2)));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(1, 4))
    );
}

#[tokio::test]
async fn t30_state_machine_is_restored_from_the_persisted_snapshot() {
    let dir = TempDir::new().expect("temp dir");
    let members = Membership::new(vec![BTreeSet::from([1u64, 2, 3])], None);
    {
        let (_log, mut sm) = store::open(dir.path()).expect("open");
        let replies = sm
            .apply(vec![
                Entry {
                    log_id: log_id(1, 1),
                    payload: EntryPayload::Membership(members.clone()),
                },
                normal(1, 2, bootstrap_cmd()),
                normal(
                    1,
                    3,
                    Command::CreateToken {
                        token: token("second"),
                    },
                ),
            ])
            .await
            .expect("apply");
        assert!(matches!(replies[0], Response::Ok), "{replies:?}");
        assert!(matches!(replies[1], Response::Node(_)), "{replies:?}");
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build snapshot");
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 3)));
        // Applied after the snapshot: not persisted by the state machine itself (openraft
        // re-applies it from the log on restart).
        sm.apply(vec![normal(
            1,
            4,
            Command::CreateToken {
                token: token("third"),
            },
        )])
        .await
        .expect("apply");
    }
    let (_log, mut sm) = store::open(dir.path()).expect("reopen");
    let (applied, membership) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(membership.membership(), &members);
    let registry = sm.registry();
    assert_eq!(registry.last_applied(), Some(log_id(1, 3)));
    assert!(registry.read(|r| r.token("second").is_some()));
    assert!(registry.read(|r| r.token("third").is_none()));
    assert_eq!(registry.read(|r| r.nodes().count()), 1);
    let current = sm
        .get_current_snapshot()
        .await
        .expect("current snapshot")
        .expect("a snapshot");
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 3)));
}

#[tokio::test]
async fn t40_install_snapshot_replaces_state_and_rejects_garbage() {
    let leader_dir = TempDir::new().expect("temp dir");
    let follower_dir = TempDir::new().expect("temp dir");
    let (_l, mut leader) = store::open(leader_dir.path()).expect("open");
    let (_f, mut follower) = store::open(follower_dir.path()).expect("open");
    leader
        .apply(vec![normal(2, 7, bootstrap_cmd())])
        .await
        .expect("apply");
    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");

    let garbage = Box::new(Cursor::new(b"not a snapshot".to_vec()));
    let err = follower
        .install_snapshot(&snap.meta, garbage)
        .await
        .expect_err("garbage must fail");
    assert!(err.to_string().contains("snapshot"), "{err}");
    assert_eq!(
        follower.applied_state().await.expect("state").0,
        None,
        "garbage changed the state"
    );

    follower
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    assert_eq!(follower.registry().last_applied(), Some(log_id(2, 7)));
    assert_eq!(follower.registry().snapshot(), leader.registry().snapshot());
}

fn open_err(dir: &std::path::Path) -> StoreError {
    match store::open(dir) {
        Ok(_) => panic!("opening {} should fail", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn t50_garbage_directory_gives_a_clear_error() {
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(
        dir.path().join("conf"),
        b"\xde\xad\xbe\xef garbage, not a sled config",
    )
    .expect("write");
    std::fs::write(dir.path().join("db"), vec![0xA5u8; 64 * 1024]).expect("write");
    std::fs::create_dir_all(dir.path().join("blobs")).expect("mkdir");
    std::fs::write(dir.path().join("snap.0000000000000000"), b"junk").expect("write");
    let msg = open_err(dir.path()).to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains(&dir.path().display().to_string()),
        "message must name the path: {msg}"
    );
    assert!(
        msg.contains("unreadable") || msg.contains("corrupt"),
        "{msg}"
    );
    assert!(
        msg.contains("remove it and rejoin"),
        "message must say what to do: {msg}"
    );
}

#[test]
fn t54_garbage_db_file_without_config_gives_a_clear_error() {
    let dir = TempDir::new().expect("temp dir");
    let junk: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("db"), junk).expect("write");
    let msg = open_err(dir.path()).to_string();
    eprintln!("{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("remove it and rejoin"), "{msg}");
}

/// The same damage as the agent-level test in jepsen-like-tests (t50_bad_state).
#[test]
fn t55_garbage_config_and_db_give_a_clear_error() {
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join("conf"), b"\xff\xfe garbage").expect("write");
    std::fs::write(dir.path().join("db"), vec![0xAB; 4096]).expect("write");
    let msg = open_err(dir.path()).to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("unreadable") && msg.contains("remove it and rejoin"),
        "{msg}"
    );
}

#[test]
fn t51_a_file_instead_of_a_directory_gives_a_clear_error() {
    let dir = TempDir::new().expect("temp dir");
    let file = dir.path().join("state");
    std::fs::write(&file, b"I am a file").expect("write");
    let msg = open_err(&file).to_string();
    eprintln!("{msg}");
    assert!(msg.contains(&file.display().to_string()), "{msg}");
    assert!(msg.contains("remove it and rejoin"), "{msg}");
}

#[tokio::test]
async fn t52_corrupt_values_give_a_clear_error() {
    let dir = TempDir::new().expect("temp dir");
    {
        let db = sled::open(dir.path()).expect("sled");
        db.open_tree("meta")
            .expect("tree")
            .insert("vote", &b"\xff"[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let err = open_err(dir.path());
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("vote") && msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
}

#[test]
fn t53_a_directory_in_use_gives_a_clear_error() {
    let dir = TempDir::new().expect("temp dir");
    let _first = store::open(dir.path()).expect("open");
    let msg = open_err(dir.path()).to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("in use by another process") && msg.contains("stop the other"),
        "{msg}"
    );
}

#[tokio::test]
async fn t56_damaged_db_that_sled_recovers_empty_is_refused() {
    let dir = TempDir::new().expect("temp dir");
    {
        let (mut log, _sm) = store::open(dir.path()).expect("open");
        append(&mut log, token_entries(50)).await;
        log.save_vote(&Vote::new(1, 1)).await.expect("save vote");
    }
    let db = dir.path().join("db");
    let mut bytes = std::fs::read(&db).expect("read db");
    let len = bytes.len();
    for b in &mut bytes[len / 4..len / 2] {
        *b ^= 0x5a;
    }
    std::fs::write(&db, bytes).expect("write db");
    // sled "recovers" such a file by dropping everything after the damage, here all of it;
    // the store must notice that its vote is gone instead of starting empty.
    let err = open_err(dir.path());
    eprintln!("{err}");
    assert!(matches!(err, StoreError::Lost { .. }), "{err:?}");
    assert!(err.to_string().contains("remove it and rejoin"), "{err}");
}
