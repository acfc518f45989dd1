"""Small apps that tests serve with a real server (uvicorn) in separate processes."""
