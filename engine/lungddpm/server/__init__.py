"""`lungddpm serve`: synthesis jobs over HTTP for a Slicer (or any client) without a GPU; see README ("A GPU server for Slicer")."""
