//! Temporary probe.
use dais_client::{Client, ClientEvent, ClientOptions, MediaConfig, Role};
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let url = std::env::args().nth(1).expect("url");
    let s = Client::connect(&url).await.expect("c");
    let j = s.join("probe", "s", Role::Speaker).await.expect("j");
    s.publish(MediaConfig::default()).await.expect("p");
    let v = Client::connect_with(&url, ClientOptions { packet_events: true, ..Default::default() }).await.expect("c");
    let mut ev = v.events().expect("ev");
    v.join("probe", "v", Role::Viewer).await.expect("j");
    let t0 = Instant::now();
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    let end = t0 + Duration::from_secs(15);
    let mut done = false;
    while Instant::now() < end {
        if !done && t0.elapsed() > Duration::from_secs(3) {
            done = true;
            let t = Instant::now();
            let mark = v.message_count();
            v.send_unsolicited_offer().await.expect("offer");
            println!("offer sent after {:?}", t.elapsed());
            let r = v.wait_for_error(mark, dais_client::ErrorCode::ViewerCannotPublish, Duration::from_secs(10)).await;
            println!("error after {:?}: {r:?}", t.elapsed());
            v.ping(1, Duration::from_secs(10)).await.expect("ping");
            println!("pong after {:?}", t.elapsed());
        }
        let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(1), ev.recv()).await else { continue };
        if let ClientEvent::Received(p) = e {
            if let (Some(c), Some(l)) = (p.counter, last.get(&p.media_id)) {
                if c != l + 1 {
                    println!("{:?} {} gap {} -> {} at {:?}", p.kind, p.media_id, l, c, t0.elapsed());
                }
            }
            if let Some(c) = p.counter { last.insert(p.media_id.clone(), c); }
        }
    }
    println!("speaker sent {:?}", s.snapshot().sent);
    for st in v.snapshot().streams.values() { println!("{st:?}"); }
    let _ = j;
}
