//! The stock participant served on its own: it registers with a coordinator and reserves,
//! sells and releases units in its own database. Its code, about fifty lines, is
//! `testkit/src/stock.rs`, which the SDK's tests drive too.
//!
//! ```sh
//! cargo run --example stock -- http://127.0.0.1:50051 sqlite://stock.db 127.0.0.1:7001 apple=10
//! ```

use settle_testkit::stock::{self, Stock};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [coordinator, database, listen, seeds @ ..] = args.as_slice() else {
        return Err("usage: stock COORDINATOR_URL DATABASE_URL LISTEN_ADDR [ITEM=QTY]...".into());
    };
    let mut stock = Vec::new();
    for s in seeds {
        let (item, qty) = s.split_once('=').ok_or("seeds are ITEM=QTY")?;
        stock.push((item, qty.parse()?));
    }
    let barrier = stock::open(database, &stock).await?;
    let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    settle::serve("stock", Stock, barrier)
        .coordinator(coordinator.as_str())
        .run(listener, shutdown)
        .await?;
    Ok(())
}
