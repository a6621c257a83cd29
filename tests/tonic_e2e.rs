//! End to end over real sockets: tonic clients whose transport is the
//! sticky stack over three (or four) real tonic servers on loopback ports.
//!
//! The servers, the hand-written `demo.Counter` client and the stack come
//! from `examples/tonic_sticky.rs`, included as a module. Each server counts
//! every session's calls in its own memory and answers `"<server> <count>"`,
//! so a misrouted call shows up as another name or a count that restarts.

#[path = "../examples/tonic_sticky.rs"]
#[allow(dead_code)]
mod demo;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};

use demo::{
    in_session, placement_of, sticky_transport, token_of, with_token, CounterClient, Reply,
    RunningServer, Transport,
};
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Request;
use tower::discover::Change;
use tower_sticky::sticky_core::{BackendSpec, BackendState, HealthPolicy, Outcome};
use tower_sticky::Backends;

type Client = CounterClient<Transport>;

async fn start(names: &[&str]) -> Vec<RunningServer> {
    let mut servers = Vec::new();
    for name in names {
        servers.push(RunningServer::start(name).await.expect("a loopback port"));
    }
    servers
}

/// Three servers and a sticky client over them.
async fn setup(health: HealthPolicy) -> (Vec<RunningServer>, Client, Backends<Channel>) {
    let servers = start(&["s1", "s2", "s3"]).await;
    let (transport, backends) = sticky_transport(&servers, health);
    (servers, CounterClient::new(transport), backends)
}

async fn visit(client: &mut Client, session: &str) -> Result<Reply, tonic::Status> {
    let response = client.visit(in_session("hi".to_owned(), session)).await?;
    Ok(Reply::parse(response.get_ref()))
}

/// Polls `condition` until it holds, failing after `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn session_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("session-{i:03}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sessions_of_ten_calls_never_change_server() {
    let (_servers, client, backends) = setup(HealthPolicy::default()).await;
    let mut sessions = JoinSet::new();
    for id in session_ids(100) {
        let mut client = client.clone();
        sessions.spawn(async move {
            let mut replies = Vec::new();
            for _ in 0..10 {
                replies.push(visit(&mut client, &id).await.expect("a reply"));
            }
            replies
        });
    }
    let mut per_server: BTreeMap<String, usize> = BTreeMap::new();
    let mut misroutes = 0;
    while let Some(replies) = sessions.join_next().await {
        let replies = replies.unwrap();
        let home = replies[0].server.clone();
        for (reply, n) in replies.iter().zip(1..) {
            if reply.server != home || reply.count != n {
                misroutes += 1;
            }
        }
        *per_server.entry(home).or_default() += 1;
    }
    println!("sessions per server: {per_server:?}");
    assert_eq!(misroutes, 0, "sessions per server: {per_server:?}");
    assert_eq!(per_server.len(), 3, "{per_server:?}");
    assert!(per_server.values().all(|&n| n >= 15), "{per_server:?}");
    let requests: u64 = backends.status().iter().map(|b| b.counters.requests).sum();
    assert_eq!(requests, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_of_a_thousand_messages_stays_on_one_server() {
    let (_servers, mut client, _backends) = setup(HealthPolicy::default()).await;
    let messages = (0..1000).map(|i| format!("message {i}"));
    let response = client
        .chat(in_session(tokio_stream::iter(messages), "chatty"))
        .await
        .expect("the stream opens");
    let placement = placement_of(&response).expect("a placement").clone();
    let mut replies = response.into_inner();
    let mut seen = Vec::new();
    while let Some(reply) = replies.message().await.expect("a reply") {
        seen.push(Reply::parse(&reply));
    }
    assert_eq!(seen.len(), 1000);
    let home = &seen[0].server;
    assert_eq!(home, placement.backend.as_str());
    for (reply, n) in seen.iter().zip(1..) {
        assert_eq!((&reply.server, reply.count), (home, n));
    }
    // The next call of the session reaches the same server.
    let after = visit(&mut client, "chatty").await.unwrap();
    assert_eq!((&after.server, after.count), (home, 1001));
}

/// Stops the server that holds the most of `homes`' sessions; returns its
/// name and the calls each session then needed, as `(failures, reply)`.
async fn stop_one_server(
    servers: &mut Vec<RunningServer>,
    client: &mut Client,
    homes: &BTreeMap<String, String>,
) -> (String, BTreeMap<String, (u32, Reply)>) {
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for home in homes.values() {
        *load.entry(home).or_default() += 1;
    }
    let victim = load.iter().max_by_key(|(_, n)| **n).unwrap().0.to_string();
    let i = servers.iter().position(|s| s.name == victim).unwrap();
    servers.remove(i).stop().await.expect("a clean stop");

    // One call per session, one session after another: how many failed
    // calls before each session gets an answer?
    let mut after = BTreeMap::new();
    for id in homes.keys() {
        let mut failures = 0;
        let reply = loop {
            match visit(client, id).await {
                Ok(reply) => break reply,
                Err(status) => {
                    // Observed: UNAVAILABLE, "tcp connect error" (a call
                    // racing the connection's close might see another code).
                    println!("  {id}: {:?}: {}", status.code(), status.message());
                    failures += 1;
                    assert!(failures < 20, "{id} keeps failing: {status:?}");
                }
            }
        };
        after.insert(id.clone(), (failures, reply));
    }
    (victim, after)
}

async fn learn_homes(client: &mut Client, ids: &[String]) -> BTreeMap<String, String> {
    let mut homes = BTreeMap::new();
    for id in ids {
        let reply = visit(client, id).await.unwrap();
        assert_eq!(reply.count, 1);
        homes.insert(id.clone(), reply.server);
    }
    homes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_costs_one_failed_call_and_only_its_sessions_move() {
    // gRPC errors are HTTP 200: only transport errors count as failures, so
    // the first one may take the server out.
    let health = HealthPolicy {
        failure_threshold: 1,
        cooldown: Duration::from_secs(60),
    };
    let (mut servers, mut client, backends) = setup(health).await;
    let ids = session_ids(60);
    let homes = learn_homes(&mut client, &ids).await;

    let (victim, after) = stop_one_server(&mut servers, &mut client, &homes).await;
    let failures: u32 = after.values().map(|(f, _)| f).sum();
    let moved = homes.values().filter(|h| **h == victim).count();
    println!("stopped {victim} ({moved} of 60 sessions): {failures} failed call(s) in all");
    assert!(failures <= 1, "{failures} failed calls");
    for (id, (failures, reply)) in &after {
        let home = &homes[id];
        if *home == victim {
            assert!(*failures <= 1, "{id}: {failures} failed calls");
            assert_ne!(reply.server, victim, "{id}");
            assert_eq!(reply.count, 1, "{id} starts afresh on {}", reply.server);
        } else {
            assert_eq!(*failures, 0, "{id}");
            assert_eq!((&reply.server, reply.count), (home, 2), "{id} stays");
        }
    }
    // Moved sessions stay where they moved.
    for (id, (_, first)) in &after {
        let again = visit(&mut client, id).await.unwrap();
        assert_eq!(
            (&again.server, again.count),
            (&first.server, first.count + 1)
        );
    }
    let state = |name: &str| {
        let status = backends.status();
        status
            .iter()
            .find(|b| b.name.as_str() == name)
            .unwrap()
            .state
    };
    assert_eq!(state(&victim), BackendState::Unhealthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_health_a_stopped_server_fails_calls_until_the_threshold() {
    // Default passive health: 5 failures in a row take a backend out. A
    // tonic Channel reports a refused connection from its response future,
    // with the request gone, so the layer cannot retry it elsewhere: those
    // calls fail (UNAVAILABLE), and a session that retries at once goes
    // back to the dead server until the threshold is reached.
    let (mut servers, mut client, _backends) = setup(HealthPolicy::default()).await;
    let ids = session_ids(60);
    let homes = learn_homes(&mut client, &ids).await;
    let (victim, after) = stop_one_server(&mut servers, &mut client, &homes).await;
    let failures: u32 = after.values().map(|(f, _)| f).sum();
    let threshold = HealthPolicy::default().failure_threshold;
    println!("stopped {victim}: {failures} failed call(s) in all (threshold {threshold})");
    assert!(failures <= threshold, "{failures} failed calls");
    for (id, (failures, reply)) in &after {
        if *failures > 0 {
            println!("  {id}: {failures} failed call(s) before an answer");
        }
        if homes[id] == victim {
            assert_ne!(reply.server, victim);
        } else {
            assert_eq!(*failures, 0, "{id}");
            assert_eq!((&reply.server, reply.count), (&homes[id], 2));
        }
    }
}

/// A call no server can take reaches its caller as UNAVAILABLE, the code
/// clients and retry policies treat as passing, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_no_server_can_take_is_unavailable() {
    let (_servers, mut client, backends) = setup(HealthPolicy::default()).await;
    visit(&mut client, "session-a").await.expect("served");
    for status in backends.status() {
        backends.disable(status.name.as_str()).unwrap();
    }
    let status = visit(&mut client, "session-a").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("no backend"), "{status:?}");
}

/// Visits every session again and returns the share that changed server,
/// checking that every one that moved went to `added` and starts afresh.
async fn moved_share(client: &mut Client, homes: &BTreeMap<String, String>, added: &str) -> f64 {
    let mut moved = 0;
    for (id, home) in homes {
        let reply = visit(client, id).await.unwrap();
        if reply.server == *home {
            assert_eq!(reply.count, 2, "{id}");
        } else {
            assert_eq!((reply.server.as_str(), reply.count), (added, 1), "{id}");
            moved += 1;
        }
    }
    let share = moved as f64 / homes.len() as f64;
    println!(
        "adding {added} moved {moved} of {} sessions ({:.1}%)",
        homes.len(),
        share * 100.0
    );
    share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_fourth_server_moves_about_a_quarter_of_the_sessions() {
    let (_servers, mut client, backends) = setup(HealthPolicy::default()).await;
    let homes = learn_homes(&mut client, &session_ids(200)).await;
    let fourth = RunningServer::start("s4").await.unwrap();
    backends
        .add(BackendSpec::new("s4"), fourth.lazy_channel())
        .unwrap();
    let share = moved_share(&mut client, &homes, "s4").await;
    assert!((0.15..=0.35).contains(&share), "{share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_server_from_a_discover_stream_moves_about_a_quarter_of_the_sessions() {
    let (_servers, mut client, backends) = setup(HealthPolicy::default()).await;
    let homes = learn_homes(&mut client, &session_ids(200)).await;

    let (changes, stream) = tokio::sync::mpsc::unbounded_channel();
    let discovery = {
        let backends = backends.clone();
        let stream =
            UnboundedReceiverStream::<Result<Change<String, Channel>, Infallible>>::new(stream);
        tokio::spawn(async move { backends.discover(stream).await })
    };
    let fourth = RunningServer::start("s4").await.unwrap();
    changes
        .send(Ok(Change::Insert("s4".to_owned(), fourth.lazy_channel())))
        .unwrap();
    wait_for("s4 to join", Duration::from_secs(5), || async {
        backends.status().len() == 4
    })
    .await;
    let share = moved_share(&mut client, &homes, "s4").await;
    assert!((0.15..=0.35).contains(&share), "{share}");

    // The stream ends, and so does discovery.
    drop(changes);
    discovery.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_session_id_are_kept_together_by_the_token() {
    let (_servers, mut client, _backends) = setup(HealthPolicy::default()).await;

    let first = client.visit(Request::new("hi".to_owned())).await.unwrap();
    let placement = placement_of(&first).unwrap().clone();
    assert_eq!(placement.outcome, Outcome::New);
    let token = token_of(&first).expect("the first response carries x-sticky-token");
    let home = Reply::parse(first.get_ref()).server;
    assert_eq!(home, placement.backend.as_str());

    for n in 1..=10 {
        let response = client
            .visit(with_token("hi".to_owned(), &token))
            .await
            .unwrap();
        assert_eq!(placement_of(&response).unwrap().outcome, Outcome::Hit);
        assert_eq!(token_of(&response), None, "no new token on a hit");
        let reply = Reply::parse(response.get_ref());
        assert_eq!((&reply.server, reply.count), (&home, n));
    }

    // A call keyed by x-session-id is placed by its key, and needs no
    // token.
    let keyed = client
        .visit(in_session("hi".to_owned(), "named"))
        .await
        .unwrap();
    let placement = placement_of(&keyed).unwrap();
    assert_eq!(placement.source.as_str(), "header");
    assert_eq!(placement.outcome, Outcome::Hit);
    assert_eq!(token_of(&keyed), None);

    // Other anonymous calls are spread over the servers.
    let mut homes = BTreeMap::new();
    for _ in 0..30 {
        let response = client.visit(Request::new("hi".to_owned())).await.unwrap();
        assert!(token_of(&response).is_some());
        *homes
            .entry(Reply::parse(response.get_ref()).server)
            .or_insert(0) += 1;
    }
    assert_eq!(homes.len(), 3, "{homes:?}");
}
