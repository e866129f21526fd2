"""The corpus and its token shards: the documents of a source (`sources`), the streaming preparation
of tokenizer, shards and index (`prepare`), and the prepared data opened for reading (`tokens`)."""
