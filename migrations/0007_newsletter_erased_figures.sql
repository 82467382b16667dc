-- A newsletter's figures outlive the erasure of a recipient. Erasure deletes the member's e-mails
-- and events; what they counted in each newsletter's figures is kept here as numbers only.

CREATE TABLE newsletter_erased_figures (
    newsletter_id bigint  NOT NULL REFERENCES newsletters (id) ON DELETE CASCADE,
    figure        text    NOT NULL,   -- a key of newsletter.figures(): recipients, sent, bounced, …
    count         integer NOT NULL CHECK (count >= 0),
    PRIMARY KEY (newsletter_id, figure)
);
