//! The privacy policy's promises to businesses and their customers, kept by the daemon:
//! the deadlines of data-subject requests and privacy enquiries ([`dates`]).

pub mod dates;
