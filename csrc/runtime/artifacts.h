/* artifacts.h — what the runtime writes: safetensors files as edgetune/artifacts/checkpoint.py writes them
 * (a checkpoint, trainable.safetensors) and model.onnx with the tuned tensors, streamed. Every file is
 * written aside and renamed, so a failed write leaves the previous file as it was. */
#ifndef EDGETUNE_RUNTIME_ARTIFACTS_H
#define EDGETUNE_RUNTIME_ARTIFACTS_H
#include <string>
#include <vector>

#include "bundle.h"

namespace et::rt {

// The arena's tensors with metadata {format: edgetune.artifacts.checkpoint, version: 1, state: state_json}.
void write_checkpoint_file(const std::string &path, const Bundle &b, const float *arena, const std::string &state_json);
// Reads a file written so (or by the Python tuner) into arena; returns its state JSON text.
std::string read_checkpoint_file(const std::string &path, const Bundle &b, float *arena);

// out_path = model (a .onnx file) with each arena tensor's initializer bytes replaced by the arena's,
// copied in chunks; external-data files the model references are copied (and patched) beside out_path.
void write_tuned_model(const std::string &model, const std::string &out_path, const Bundle &b, const float *arena);

// Copy a file atomically (aside + rename).
void copy_file(const std::string &from, const std::string &to);

}  // namespace et::rt
#endif
