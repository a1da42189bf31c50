"""The product index (runtime): FAISS vectors (`faiss_index`), the SQLite catalog (`catalog_store`),
their on-disk snapshot and manifest (`snapshot`, `manifest`), and `product_index.ProductIndex`
binding them. It computes no embeddings and imports no training code.
"""
