//! The embedded store: one redb file, which one process writes (docs/architecture.md, "Store
//! layouts").
//!
//! - `layout`: the tables and how keys and counts are encoded in them;
//! - `migrate`: moving stores written by earlier builds to the current layout;
//! - `store`: [`EmbeddedStore`], the [`crate::store::PosteriorStore`] over that file.

mod layout;
mod migrate;
mod store;

pub use store::EmbeddedStore;
