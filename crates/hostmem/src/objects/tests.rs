//! The container's rules, each read back where it shows: ids and order through the
//! container's own listing (that is the rule), started contexts and deleted memory
//! through the kernel (/proc/self/task, /proc/self/maps).

use super::*;

fn declare(objects: &mut Objects, text: &str) -> Result<(), ObjectsError> {
    objects.declare(ObjectSpec::parse(text).unwrap())
}

fn ram(id: &str) -> Backend {
    ObjectSpec::parse(&format!("memory-backend-ram,id={id},size=2M"))
        .and_then(|s| s.to_backend(&MachineDefaults::default()))
        .unwrap()
}

/// Whether the kernel has a mapping starting at `addr` in this process.
fn mapped(addr: usize) -> bool {
    let start = format!("{addr:x}-");
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|l| l.starts_with(&start))
}

/// The kernel's name of a thread of this process.
fn comm(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

fn ids(objects: &Objects) -> Vec<(&str, &'static str)> {
    objects.children().collect()
}

#[test]
fn an_id_is_taken_once_across_backends_contexts_and_reservations() {
    let dup = "attempt to add duplicate property 'a' to object (type 'container')";
    let mut o = Objects::new();
    declare(&mut o, "memory-backend-ram,id=a,size=2M").unwrap();
    let e = declare(&mut o, "thread-context,id=a").unwrap_err();
    assert_eq!(e.to_string(), dup);
    assert_eq!(o.reserve("a").unwrap_err().to_string(), dup);
    o.reserve("b").unwrap();
    assert!(matches!(
        o.add_backend(ram("b")),
        Err(ObjectsError::Duplicate(_))
    ));
    o.release("b");
    o.add_backend(ram("b")).unwrap();
    assert!(matches!(o.reserve("b"), Err(ObjectsError::Duplicate(_))));
}

#[test]
fn contexts_are_started_first_so_a_backend_links_one_declared_after_it() {
    let mut o = Objects::new();
    declare(
        &mut o,
        "memory-backend-ram,id=m,size=2M,prealloc-context=tcobj1",
    )
    .unwrap();
    declare(&mut o, "thread-context,id=tcobj1").unwrap();
    o.create(&MachineDefaults::default()).unwrap();
    assert_eq!(
        ids(&o),
        [("tcobj1", "thread-context"), ("m", "memory-backend-ram")],
        "creation order: the context first"
    );
    let tid = o.context("tcobj1").unwrap().thread_id().unwrap();
    assert_eq!(comm(tid).as_deref(), Some("TC tcobj1"), "its thread runs");
    let link = &o.backend("m").unwrap().config().common.prealloc_context;
    assert_eq!(link.to_string(), "/objects/tcobj1");
}

#[test]
fn a_link_resolves_among_the_objects_with_qemus_errors() {
    let mut o = Objects::new();
    declare(&mut o, "memory-backend-ram,id=a,size=2M").unwrap();
    // A backend declared later is an object of the wrong type, not a missing one.
    declare(&mut o, "memory-backend-ram,id=b,size=2M,prealloc-context=c").unwrap();
    declare(&mut o, "memory-backend-ram,id=c,size=2M").unwrap();
    let e = o.create(&MachineDefaults::default()).unwrap_err();
    assert_eq!(e.index, 1);
    assert_eq!(
        e.to_string(),
        "Invalid parameter type for 'prealloc-context', expected: thread-context"
    );
    let mut o = Objects::new();
    declare(&mut o, "memory-backend-ram,id=a,size=2M,prealloc-context=x").unwrap();
    o.reserve("x").unwrap();
    assert!(
        o.lookup("x").is_none(),
        "an object being made is not linked"
    );
    let e = o.create(&MachineDefaults::default()).unwrap_err();
    assert_eq!((e.index, e.to_string()), (0, "Device 'x' not found".into()));
}

#[test]
fn a_backend_in_use_is_not_deleted_and_keeps_its_memory() {
    let mut o = Objects::new();
    let mut m = ram("m");
    m.complete().unwrap();
    let addr = m.host_addr().unwrap();
    o.add_backend(m).unwrap();
    o.reserve("n").unwrap();
    let hold = o.backend("m").unwrap().hold().unwrap();
    assert_eq!(
        o.delete("m").unwrap_err().to_string(),
        "object 'm' is in use, can not be deleted"
    );
    assert_eq!(o.delete_all().len(), 1, "refused again");
    assert!(mapped(addr), "the memory is still mapped");
    drop(hold);
    o.delete("m").unwrap();
    assert!(!mapped(addr), "deleted: the kernel has no mapping there");
    assert_eq!(
        o.delete("m").unwrap_err().to_string(),
        "object 'm' not found"
    );
    assert_eq!(
        o.delete("n").unwrap_err().to_string(),
        "object 'n' is still being created (preallocating), can not be deleted"
    );
}

#[test]
fn a_deleted_context_lives_on_in_the_backends_that_link_it() {
    let mut o = Objects::new();
    declare(&mut o, "thread-context,id=tcobj2").unwrap();
    declare(
        &mut o,
        "memory-backend-ram,id=m,size=2M,prealloc-context=tcobj2",
    )
    .unwrap();
    o.create(&MachineDefaults::default()).unwrap();
    let tid = o.context("tcobj2").unwrap().thread_id().unwrap();
    o.delete("tcobj2").unwrap();
    assert!(o.lookup("tcobj2").is_none());
    assert_eq!(comm(tid).as_deref(), Some("TC tcobj2"), "the link keeps it");
    let link = &o.backend("m").unwrap().config().common.prealloc_context;
    assert_eq!(link.to_string(), "", "the link reads empty, as in QEMU");
    assert!(o.delete_all().is_empty());
    assert_eq!(ids(&o), []);
}

#[test]
fn objects_are_listed_in_creation_order_through_reservations() {
    let mut o = Objects::new();
    o.reserve("x").unwrap();
    o.add_backend(ram("y")).unwrap();
    o.reserve("z").unwrap();
    assert_eq!(
        ids(&o),
        [("y", "memory-backend-ram")],
        "reservations unlisted"
    );
    o.fill_backend(ram("z"));
    o.fill_backend(ram("x"));
    let order: Vec<&str> = o.backends().map(|b| b.id()).collect();
    assert_eq!(order, ["x", "y", "z"]);
    let handles = o.map_backends(Arc::new);
    let order: Vec<&str> = handles.children().map(|(id, _)| id).collect();
    assert_eq!(order, ["x", "y", "z"]);
}

#[test]
fn finish_delete_leaves_a_backend_that_is_not_the_one_begun_with() {
    let mut o = Objects::<Arc<Backend>>::new();
    o.add_backend(Arc::new(ram("m"))).unwrap();
    let Ok(Deleting::Backend(first)) = o.begin_delete("m") else {
        panic!("a backend");
    };
    let first = first.clone();
    // Meanwhile another caller replaced it by a backend of the same id.
    o.finish_delete("m", |_| true, |_| Ok(())).unwrap();
    o.add_backend(Arc::new(ram("m"))).unwrap();
    let e = o
        .finish_delete("m", |b| Arc::ptr_eq(b, &first), |_| Ok(()))
        .unwrap_err();
    assert_eq!(e.to_string(), "object 'm' not found");
    assert_eq!(o.backends().count(), 1);
}
