//! Socket.IO v5.
