//! Store outages: see the tests in this module.
