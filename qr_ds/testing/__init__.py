"""What tests, benchmarks and experiments build on and production never imports: synthetic pools, tiny
students, train configs, the real launcher, and a stand-in chat-completions server."""
