module.exports = require('./random.js').randomBytes;
