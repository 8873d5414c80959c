//! Configuration: the ZPL reader ([`zpl`]) and the worker's typed settings.

pub mod zpl;
