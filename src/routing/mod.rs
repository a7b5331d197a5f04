//! The pure routing core: an immutable [`Table`] built from nodes, a strategy,
//! pins and user regions, and the per-uid placement over it.
//!
//! **Architecture invariant:** nothing here is async, does I/O, reads a clock or
//! touches global state. The same inputs give the same table and the same
//! answers on every process.

pub mod bounded;
pub mod hash;
pub mod hrw;
pub mod region;
pub mod strategy;
pub mod table;
pub mod weighted;

pub use strategy::{Candidate, ParamsError, Placement, StrategyKind, BUILTIN};
pub use table::{
    NodeInput, PreparedNode, PreparedOverrides, StrategyInput, Table, TableInput, TableNode,
};

#[cfg(test)]
mod tests;
