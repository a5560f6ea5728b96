//! The benchmark behind the `bench` binary: zerolm's training step and forward pass against PyTorch's
//! on this machine ([`rounds`]), each measurement in a worker process of its own ([`measure`]); and the
//! matrix-product kernels alone ([`kernels`]); model FLOPs for utilisation figures ([`flops`]).

pub mod flops;
pub mod kernels;
pub mod measure;
pub mod rounds;
