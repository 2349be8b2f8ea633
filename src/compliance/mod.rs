//! The privacy policy's promises to businesses and their customers, kept by the daemon:
//! data-subject requests ([`requests`], executed by the compliance actor), their
//! deadlines ([`dates`]) and reminders ([`reminders`]), privacy enquiries
//! ([`enquiries`]), and the operator's notices to account holders: policy versions,
//! the processing record and disclosures to authorities ([`notices`]).

pub mod dates;
pub mod enquiries;
pub mod notices;
pub mod reminders;
pub mod requests;
