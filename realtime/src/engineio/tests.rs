//! Tests of the server, driven through the seam.
