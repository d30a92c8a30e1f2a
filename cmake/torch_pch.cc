// Compiles the shared precompiled header for libtorch targets (cmake/HerdCompiler.cmake).
