//! capsa-agent: PID 1 inside the microVM guest that runs the container (not implemented yet).
