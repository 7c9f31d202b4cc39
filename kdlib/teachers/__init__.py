"""Teachers: one API (`teacher.make_teacher`) over a local engine and OpenAI-compatible servers, with grammars, decoding strategies, a persistent cache and a token ledger."""
