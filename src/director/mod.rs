//! The BOSH director + UAA client and the poller.
