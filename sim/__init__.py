"""maitred.sim: a simulated OpenAI- and vLLM-compatible model server with continuous-batching timing."""
