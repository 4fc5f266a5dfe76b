"""Speed and memory measurement of ANNs, parallel and serial SNNs and peers."""
