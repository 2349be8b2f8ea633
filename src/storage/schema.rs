//! The tables, written once for both backends (the migrations under
//! `migrations/sqlite` and `migrations/postgres` create the same shapes).

diesel::table! {
    tenants (id) {
        id -> Text,
        name -> Text,
        holder_email -> Text,
        created_at -> BigInt,
        closed_at -> Nullable<BigInt>,
        purge_after -> Nullable<BigInt>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        tenant_id -> Text,
        key_hash -> Text,
        prefix -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    phone_numbers (phone_number_id) {
        phone_number_id -> Text,
        tenant_id -> Text,
        display_phone_number -> Text,
        waba_id -> Text,
        access_token_ct -> Binary,
        created_at -> BigInt,
        throughput_mps -> Nullable<Integer>,
        paused_at -> Nullable<BigInt>,
        held_until -> Nullable<BigInt>,
        portfolio_id -> Nullable<Text>,
    }
}

diesel::table! {
    inbox (id) {
        id -> BigInt,
        dedupe_bidx -> Text,
        tenant_id -> Text,
        phone_number_id -> Text,
        route_bidx -> Text,
        kind -> Text,
        payload_ct -> Binary,
        received_at -> BigInt,
        processed_at -> Nullable<BigInt>,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        parked_at -> Nullable<BigInt>,
        key_day -> Nullable<Text>,
    }
}

diesel::table! {
    webhook_events (id) {
        id -> Text,
        received_at -> BigInt,
        reason -> Text,
        field -> Nullable<Text>,
        tenant_id -> Nullable<Text>,
        phone_number_id -> Nullable<Text>,
        payload_ct -> Binary,
        key_day -> Nullable<Text>,
    }
}

diesel::table! {
    contacts (id) {
        id -> Text,
        tenant_id -> Text,
        key_id -> Text,
        wa_id_bidx -> Nullable<Text>,
        user_id_bidx -> Nullable<Text>,
        wa_id_ct -> Nullable<Binary>,
        user_id_ct -> Nullable<Binary>,
        username_ct -> Nullable<Binary>,
        profile_name_ct -> Nullable<Binary>,
        marketing_opt_out -> Bool,
        marketing_pref_at -> Nullable<BigInt>,
        first_seen_at -> BigInt,
        last_seen_at -> BigInt,
        restricted_at -> Nullable<BigInt>,
        objected_at -> Nullable<BigInt>,
        crm_ct -> Nullable<Binary>,
    }
}

diesel::table! {
    conversations (id) {
        id -> Text,
        tenant_id -> Text,
        phone_number_id -> Text,
        contact_id -> Text,
        opened_at -> BigInt,
        last_inbound_at -> Nullable<BigInt>,
        window_ends_at -> Nullable<BigInt>,
        last_message_at -> BigInt,
        closed_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    messages (id) {
        id -> Text,
        tenant_id -> Text,
        conversation_id -> Text,
        contact_id -> Text,
        wamid_bidx -> Text,
        wamid_ct -> Nullable<Binary>,
        direction -> Text,
        msg_type -> Nullable<Text>,
        sent_at -> BigInt,
        received_at -> BigInt,
        key_id -> Nullable<Text>,
        content_ct -> Nullable<Binary>,
        status -> Nullable<Text>,
        status_at -> Nullable<BigInt>,
        error_json -> Nullable<Text>,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    status_events (id) {
        id -> Text,
        tenant_id -> Text,
        message_id -> Text,
        status -> Text,
        occurred_at -> BigInt,
        detail_json -> Nullable<Text>,
    }
}

diesel::table! {
    keystore.data_keys (id) {
        id -> Text,
        tenant_id -> Text,
        wrapped_key -> Nullable<Binary>,
        created_at -> BigInt,
        destroyed_at -> Nullable<BigInt>,
    }
}

// SQLite only (see `conversation_index`): PostgreSQL lists a conversation's messages
// through an index on messages.

diesel::table! {
    conversation_messages (conversation_id, message_id) {
        conversation_id -> Text,
        message_id -> Text,
    }
}

diesel::table! {
    conversation_index_state (id) {
        id -> BigInt,
        indexed_through -> BigInt,
        deletions -> BigInt,
    }
}

diesel::table! {
    keystore.raw_keys (day) {
        day -> Text,
        wrapped_key -> Nullable<Binary>,
        created_at -> BigInt,
        destroyed_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    keystore.erasures (request_id) {
        request_id -> Text,
        tenant_id -> Text,
        contact_id -> Nullable<Text>,
        subject_bidx -> Text,
        route_bidxs -> Text,
        erased_at -> BigInt,
    }
}

diesel::table! {
    keystore.tenant_purges (tenant_id) {
        tenant_id -> Text,
        purged_at -> BigInt,
    }
}

diesel::table! {
    storage_upgrades (name) {
        name -> Text,
        done_at -> BigInt,
    }
}

diesel::table! {
    master_key_check (id) {
        id -> Integer,
        check_value -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    privacy_enquiries (id) {
        id -> Text,
        tenant_id -> Text,
        subject_ct -> Binary,
        message_ct -> Binary,
        state -> Text,
        received_at -> BigInt,
        due_on -> Text,
        answered_at -> Nullable<BigInt>,
        answer_ct -> Nullable<Binary>,
    }
}

diesel::table! {
    compliance_reminders (item_id) {
        item_id -> Text,
        tenant_id -> Text,
        sent_at -> BigInt,
    }
}

diesel::table! {
    policy_versions (version) {
        version -> Text,
        effective_on -> Text,
        summary -> Text,
        published_at -> BigInt,
        notice_id -> Nullable<Text>,
    }
}

diesel::table! {
    disclosures (id) {
        id -> Text,
        tenant_id -> Text,
        authority -> Text,
        recorded_at -> BigInt,
        notify -> Bool,
        notified_at -> Nullable<BigInt>,
        lifted_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    processing_records (id) {
        id -> Text,
        record_json -> Text,
        recorded_at -> BigInt,
        notice_id -> Nullable<Text>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    api_keys,
    phone_numbers,
    inbox,
    webhook_events,
    contacts,
    conversations,
    messages,
    status_events,
    conversation_messages,
    contact_labels,
    outbox,
    media_downloads,
    idempotency_keys,
);

diesel::table! {
    outbox (id) {
        id -> Text,
        tenant_id -> Text,
        phone_number_id -> Text,
        contact_id -> Text,
        kind -> Text,
        key_id -> Text,
        request_ct -> Binary,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        accepted_at -> BigInt,
        deadline_at -> BigInt,
        error_json -> Nullable<Text>,
        marketing -> Bool,
        limit_held_since -> Nullable<BigInt>,
    }
}

diesel::table! {
    idempotency_keys (tenant_id, key_bidx) {
        tenant_id -> Text,
        key_bidx -> Text,
        request_hash -> Text,
        outbox_id -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    templates (tenant_id, waba_id, name, language) {
        tenant_id -> Text,
        waba_id -> Text,
        name -> Text,
        language -> Text,
        category -> Text,
        status -> Text,
        components_json -> Text,
        synced_at -> BigInt,
    }
}

diesel::table! {
    template_syncs (tenant_id, waba_id) {
        tenant_id -> Text,
        waba_id -> Text,
        synced_at -> BigInt,
    }
}

diesel::table! {
    contact_labels (tenant_id, label_bidx, contact_id) {
        tenant_id -> Text,
        label_bidx -> Text,
        contact_id -> Text,
    }
}

diesel::table! {
    usage_daily (tenant_id, day, metric) {
        tenant_id -> Text,
        day -> BigInt,
        metric -> Text,
        count -> BigInt,
    }
}

diesel::table! {
    automations (id) {
        id -> Text,
        tenant_id -> Text,
        position -> BigInt,
        definition_json -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    automation_runs (id) {
        id -> Text,
        tenant_id -> Text,
        automation_id -> Nullable<Text>,
        kind -> Text,
        contact_id -> Text,
        message_id -> Nullable<Text>,
        outcome -> Text,
        ran_at -> BigInt,
    }
}

diesel::table! {
    tenant_settings (tenant_id) {
        tenant_id -> Text,
        settings_json -> Text,
        updated_at -> BigInt,
    }
}

diesel::table! {
    media_downloads (message_id) {
        message_id -> Text,
        tenant_id -> Text,
        phone_number_id -> Text,
        kind -> Text,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        created_at -> BigInt,
        mime_type -> Nullable<Text>,
        file_size -> Nullable<BigInt>,
        content_ct -> Nullable<Binary>,
        error_json -> Nullable<Text>,
        fetched_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(media_downloads -> messages (message_id));

diesel::table! {
    messaging_limits (portfolio_id) {
        portfolio_id -> Text,
        messaging_limit -> BigInt,
        source -> Text,
        updated_at -> BigInt,
        reached_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    portfolio_reach (portfolio_id, contact_id) {
        portfolio_id -> Text,
        contact_id -> Text,
        reached_at -> BigInt,
    }
}

diesel::table! {
    retention_policies (tenant_id, category) {
        tenant_id -> Text,
        category -> Text,
        days -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    retention_runs (id) {
        id -> Text,
        tenant_id -> Text,
        started_at -> BigInt,
        finished_at -> Nullable<BigInt>,
        dry_run -> Bool,
        deleted_json -> Text,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Text,
        tenant_id -> Text,
        at -> BigInt,
        actor -> Text,
        action -> Text,
        request_id -> Nullable<Text>,
        contact_id -> Nullable<Text>,
        detail_json -> Text,
    }
}

diesel::table! {
    notices (id) {
        id -> Text,
        subject -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    email_outbox (id) {
        id -> Text,
        tenant_id -> Text,
        notice_id -> Nullable<Text>,
        event -> Text,
        recipient -> Text,
        subject -> Text,
        text_body -> Text,
        html_body -> Text,
        message_id -> Text,
        state -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        sent_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    privacy_requests (id) {
        id -> Text,
        tenant_id -> Text,
        kind -> Text,
        state -> Text,
        subject_bidx -> Text,
        contact_id -> Nullable<Text>,
        received_at -> BigInt,
        due_on -> Text,
        extended_due_on -> Nullable<Text>,
        completed_at -> Nullable<BigInt>,
        reason -> Nullable<Text>,
        lifted_at -> Nullable<BigInt>,
        route_bidx -> Nullable<Text>,
        outcome_json -> Nullable<Text>,
        changes_ct -> Nullable<Binary>,
        changes_key_id -> Nullable<Text>,
    }
}
