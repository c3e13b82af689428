//! Embed the store in a program: write, close, reopen, read back.
//!
//! `cargo run --release --example embedded [DATA_DIR]`

use kv_storage::{Durability, Options, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./data-embedded".to_string());
    let store = Store::open(Options::new(&dir).durability(Durability::EverySec))?;
    println!("opened {dir}: {}", store.recovery_report());

    for i in 0..1000u32 {
        store.put(
            format!("user:{i:04}").as_bytes(),
            format!("name {i}").as_bytes(),
        )?;
    }
    store.delete(b"user:0007")?;
    println!("wrote 1000 keys, deleted one; {} live keys", store.len());
    store.close()?;

    let store = Store::open(Options::new(&dir))?;
    println!("reopened: {}", store.recovery_report());
    let value = store
        .get(b"user:0042")
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    println!("user:0042 = {value:?}");
    println!("user:0007 = {:?}", store.get(b"user:0007"));
    // A page of 3 keys, in (hash, key) order.
    let page = store.list_page(b"user:", None, 3);
    for (k, v) in page.entries {
        println!(
            "{} = {}",
            String::from_utf8_lossy(&k),
            String::from_utf8_lossy(&v)
        );
    }
    Ok(())
}
