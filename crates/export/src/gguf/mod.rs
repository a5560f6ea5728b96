//! GGUF export: the container ([`file`]), ggml's encodings ([`quant`]) and the mapping of a zerolm
//! model onto llama.cpp's `llama` / `qwen3` architectures ([`llama`]).

pub mod file;
pub mod llama;
pub mod quant;
