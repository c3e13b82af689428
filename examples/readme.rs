//! Open a store, write, read, scan and close it.

use kv_storage::{Durability, Options, Store};

fn main() -> Result<(), kv_storage::Error> {
    let store = Store::open(Options::new("./data").durability(Durability::EverySec))?;
    println!("{}", store.recovery_report()); // what recovery loaded
    store.put(b"user:1", b"ada")?;
    assert_eq!(store.get(b"user:1").as_deref(), Some(&b"ada"[..]));
    for (key, value) in store.scan_prefix(b"user:") {
        // sorted by key
        let key = String::from_utf8_lossy(&key);
        println!("{key} = {}", String::from_utf8_lossy(&value));
    }
    store.close()?; // or drop it
    Ok(())
}
