//! The privacy policy's promises to businesses and their customers, kept by the daemon:
//! data-subject requests ([`requests`], executed by the compliance actor) and their
//! deadlines ([`dates`]).

pub mod dates;
pub mod requests;
