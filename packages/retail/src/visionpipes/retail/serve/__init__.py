"""The query HTTP API (runtime): app construction (`app`), routes (`routes`), payload models
(`schemas`), uploads (`uploads`), Prometheus metrics (`metrics`), the deploy-folder lookup
(`deployment`) and the search page (`page`). It never imports the training stack.
"""
