//! ZIP intake (work in progress).
