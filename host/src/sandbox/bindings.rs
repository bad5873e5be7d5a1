//! Host bindings for the `sluice:adapter@0.2.0` world.

wasmtime::component::bindgen!({
    path: "../wit/v0.2.0",
    world: "adapter",
    // Records keep the lifted values as they are, and compare them.
    additional_derives: [PartialEq],
    imports: {
        // A failed read of the spooled input ends the call; it is the host's
        // problem, not the plugin's, and is classified as such.
        "sluice:adapter/input.read": trappable,
    },
});
