const r = require('./random.js');
module.exports = { randomFill: r.randomFill, randomFillSync: r.randomFillSync };
