"""chainserve: LangServe chains for classification, summarization, translation and QA."""
