//! Every shipped PTX module parses, and every declared kernel is in it.

#[test]
fn every_shipped_module_parses() {
    for fam in palm_kernels::FAMILIES {
        let m = palm_ptx_vm::parse(&format!("{}.ptx", fam.name), fam.ptx)
            .unwrap_or_else(|e| panic!("{e}"));
        for f in fam.functions {
            let k = m
                .kernel(f)
                .unwrap_or_else(|| panic!("{f} missing from {}.ptx", fam.name));
            assert!(!k.code.is_empty());
        }
        assert_eq!(m.kernels.len(), fam.functions.len(), "{}", fam.name);
    }
}

#[test]
fn the_test_kernels_parse() {
    for (name, text) in [
        ("bugs.ptx", include_str!("kernels/bugs.ptx")),
        ("facts.ptx", include_str!("kernels/facts.ptx")),
    ] {
        palm_ptx_vm::parse(name, text).unwrap_or_else(|e| panic!("{e}"));
    }
}
