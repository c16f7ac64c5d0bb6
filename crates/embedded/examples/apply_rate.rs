//! How fast the embedded store takes batches, each flushed to the OS before
//! the next, as a service does: `cargo run --release -p breakwater-embedded
//! --example apply_rate`.

use std::sync::Arc;
use std::time::Instant;

use breakwater_embedded::{EmbeddedStore, Op};
use breakwater_signal::SystemClock;

const VALUE_BYTES: usize = 60;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path(), Arc::new(SystemClock))?;
    let ns = store.namespace("bench")?;
    let expires_at = store.now() + 300_000;
    for (batches, per_batch) in [(200_000_u64, 1_u64), (20_000, 50)] {
        let start = Instant::now();
        for b in 0..batches {
            let ops: Vec<Op> = (0..per_batch)
                .map(|i| Op::Put {
                    key: format!("{per_batch}:{:016x}", b * per_batch + i).into_bytes(),
                    value: vec![7; VALUE_BYTES],
                    expires_at,
                })
                .collect();
            ns.apply(&ops)?;
        }
        let secs = start.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let (batch_rate, put_rate) = (batches as f64 / secs, (batches * per_batch) as f64 / secs);
        println!("{per_batch:>3} puts per batch: {batch_rate:>10.0} batches/s, {put_rate:>10.0} puts/s");
    }
    store.sync()?;
    let start = Instant::now();
    let live = ns.load_live(store.now())?;
    println!("load_live: {} entries in {:?}", live.len(), start.elapsed());
    Ok(())
}
