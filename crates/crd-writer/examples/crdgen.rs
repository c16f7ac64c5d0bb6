//! Prints the RemediationRequest CRD: `cargo run -p breakwater-crd-writer --example crdgen > deploy/crd.yaml`
//! (what `breakwater crd` prints).

fn main() -> Result<(), serde_saphyr::SerializeError> {
    print!("{}", breakwater_crd_writer::crd_yaml()?);
    Ok(())
}
